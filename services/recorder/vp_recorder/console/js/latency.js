// Latency over time: p50 and p95 of each per-turn figure per minute or hour (GET /stats/latency,
// computed by PostgreSQL from call_turns), drawn as inline SVG line charts.
import { getJson } from "./api.js";
import { el, svg } from "./dom.js";

const TITLES = {
  voice_to_voice: "voice → voice (first audio played)",
  asr: "ASR final",
  llm_first_sentence: "LLM first sentence",
  tts_first_audio: "TTS first audio",
};

function chart(name, points, range) {
  const width = 560, height = 180, left = 48, bottom = 24, top = 10, right = 10;
  const series = [[`${name}_p50`, "#2f6fde"], [`${name}_p95`, "#d9534f"]];
  const values = points.flatMap((p) => series.map(([k]) => p[k])).filter((v) => v !== null);
  const node = svg("svg", { class: "latency-chart", "data-figure": name, width, height, viewBox: `0 0 ${width} ${height}` });
  if (!values.length) {
    node.append(svg("text", { x: left, y: height / 2 }, "no turns in this range"));
    return node;
  }
  const max = Math.max(...values) * 1.1 || 1;
  // the whole range asked for, so a quiet stretch shows as a gap
  const [t0, t1] = range;
  const x = (t) => left + (t1 === t0 ? (width - left - right) / 2 : ((t - t0) / (t1 - t0)) * (width - left - right));
  const y = (v) => top + (1 - v / max) * (height - top - bottom);
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    node.append(svg("line", { x1: left, x2: width - right, y1: y(v), y2: y(v), stroke: "#e3e7ee" }),
      svg("text", { x: 2, y: y(v) + 4 }, `${Math.round(v)}`));
  }
  node.append(svg("text", { x: left, y: height - 6 }, new Date(t0).toLocaleString()),
    svg("text", { x: width - right, y: height - 6, "text-anchor": "end" }, new Date(t1).toLocaleString()));
  for (const [key, color] of series) {
    const pts = points.filter((p) => p[key] !== null).map((p) => `${x(Date.parse(p.bucket))},${y(p[key])}`);
    node.append(svg("polyline", { class: key, points: pts.join(" "), fill: "none", stroke: color, "stroke-width": 2 }));
    for (const p of points.filter((q) => q[key] !== null)) {
      const dot = svg("circle", { cx: x(Date.parse(p.bucket)), cy: y(p[key]), r: 2.5, fill: color });
      dot.append(svg("title", {}, `${p.bucket} ${key}: ${p[key]} ms (${p.turns} turns)`));
      node.append(dot);
    }
  }
  return node;
}

export async function showLatency(view, params) {
  const bucket = params.get("bucket") || "hour";
  const robot = params.get("robot") || "";
  const form = el("form", { class: "filters" },
    el("label", {}, "bucket", el("select", { name: "bucket" },
      ["minute", "hour"].map((b) => el("option", { value: b, selected: b === bucket }, b)))),
    el("label", {}, "robot", el("input", { name: "robot", value: robot, size: 14 })),
    el("button", { type: "submit" }, "Show"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const q = new URLSearchParams({ bucket: form.elements.bucket.value });
    if (form.elements.robot.value) q.set("robot", form.elements.robot.value);
    location.hash = `#/latency?${q}`;
  });
  const q = new URLSearchParams({ bucket });
  if (robot) q.set("robot", robot);
  const answer = await getJson(`/stats/latency?${q}`);
  if (answer.error) {
    view.replaceChildren(form, el("p", { class: "error" }, answer.error));
    return null;
  }
  const turns = answer.points.reduce((a, p) => a + p.turns, 0);
  view.replaceChildren(form,
    el("p", { class: "muted" }, `${answer.from} – ${answer.to}, per ${bucket}: ${turns} turns. `,
      el("span", { style: "color:#2f6fde" }, "p50"), " / ", el("span", { style: "color:#d9534f" }, "p95"),
      ", ms from the end of the caller's speech"),
    ...Object.keys(TITLES).map((name) => el("section", {}, el("h3", {}, TITLES[name]), chart(name, answer.points, [Date.parse(answer.from), Date.parse(answer.to)]))));
  return null;
}
