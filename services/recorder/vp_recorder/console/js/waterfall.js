// Per-turn latency waterfall (inline SVG): from the end of the caller's speech, each stage as a bar
// where it starts and ends: ASR final → routing → LLM first sentence → TTS first audio → first audio
// played. The figures are the recorder's per-turn figures (GET /calls/{id}/turns), measured once by
// the gateway; routing is split out when the router switched prompts on the turn (its moment is known).
import { el, svg } from "./dom.js";

export const STAGES = [
  ["asr", "VAD end → ASR final"],
  ["route", "routing"],
  ["llm", "LLM first sentence"],
  ["tts", "TTS first audio"],
  ["play", "first audio played"],
];

// [stage, from_ms, to_ms] for one turn; a stage that did not happen is left out
export function spans(turn, switchAtMs = null) {
  const asr = turn.asr_ms, llm = turn.llm_first_sentence_ms, tts = turn.tts_first_audio_ms;
  const played = turn.voice_to_voice_ms;
  const out = [];
  if (asr !== null && asr !== undefined) out.push(["asr", 0, asr]);
  if (llm !== null && llm !== undefined) {
    const from = asr ?? 0;
    if (switchAtMs !== null && switchAtMs > from && switchAtMs < llm) {
      out.push(["route", from, switchAtMs], ["llm", switchAtMs, llm]);
    } else out.push(["llm", from, llm]);
  }
  if (tts !== null && tts !== undefined) out.push(["tts", llm ?? asr ?? 0, tts]);
  if (played !== null && played !== undefined) out.push(["play", tts ?? llm ?? 0, played]);
  return out;
}

export function waterfall(turns, switches = {}) {
  const rows = turns.filter((t) => t.speech_end_at && t.voice_to_voice_ms !== null);
  if (!rows.length) return el("p", { class: "muted" }, "no turn with caller speech and a played reply");
  const widest = Math.max(...rows.map((t) => Math.max(t.voice_to_voice_ms || 0, t.tts_first_audio_ms || 0)), 1);
  const label = 120, width = 760, rowH = 22, top = 18;
  const scale = (width - label - 60) / widest;
  const height = top + rows.length * rowH + 6;
  const chart = svg("svg", { id: "waterfall", width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  const step = widest > 4000 ? 1000 : widest > 1500 ? 500 : 250;
  for (let t = 0; t <= widest; t += step) {
    const x = label + t * scale;
    chart.append(svg("line", { x1: x, x2: x, y1: top - 4, y2: height, stroke: "#e3e7ee" }),
      svg("text", { x, y: 11, "text-anchor": "middle" }, `${t}`));
  }
  rows.forEach((turn, i) => {
    const y = top + i * rowH;
    const group = svg("g", { class: "turn", "data-turn": turn.turn_id });
    group.append(svg("text", { x: 0, y: y + 14 }, turn.turn_id.length > 18 ? `…${turn.turn_id.slice(-17)}` : turn.turn_id));
    for (const [stage, from, to] of spans(turn, switches[turn.turn_id] ?? null)) {
      const bar = svg("rect", {
        class: `bar ${stage}`, x: label + from * scale, y: y + 3, height: rowH - 8,
        width: Math.max(1, (to - from) * scale), fill: `var(--${stage})`,
      });
      bar.append(svg("title", {}, `${STAGES.find((s) => s[0] === stage)[1]}: ${from}–${to} ms`));
      group.append(bar);
    }
    group.append(svg("text", { x: label + turn.voice_to_voice_ms * scale + 4, y: y + 14 }, `${turn.voice_to_voice_ms} ms`));
    chart.append(group);
  });
  const legend = el("div", { class: "legend" },
    STAGES.map(([stage, text]) => el("span", {}, el("i", { style: `background: var(--${stage})` }), text)),
    el("span", { class: "muted" }, "ms from the end of the caller's speech"));
  return el("div", {}, chart, legend);
}
