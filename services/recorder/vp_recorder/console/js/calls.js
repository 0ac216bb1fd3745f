// The calls list: filters (robot, dates, end reason, errors, channel, status) and a search over
// the caller's number and what was said (operator only), newest first, a page at a time.
import { getJson } from "./api.js";
import { dash, el, ms, seconds, when } from "./dom.js";

const FIELDS = ["q", "robot", "channel", "status", "end_reason", "has_errors", "from", "to"];

function filterForm(params, operator) {
  const input = (name, label, attrs = {}) =>
    el("label", {}, label, el("input", { name, value: params.get(name) || "", ...attrs }));
  const select = (name, label, options) =>
    el("label", {}, label, el("select", { name },
      options.map(([value, text]) => el("option", { value, selected: (params.get(name) || "") === value }, text))));
  const local = (name) => {
    const value = params.get(name);
    return value ? value.slice(0, 16) : "";
  };
  return el("form", { class: "filters", id: "filters" },
    operator ? input("q", "search (caller, call id, words)", { type: "search", size: 28 }) : null,
    input("robot", "robot", { size: 14 }),
    select("channel", "channel", [["", "any"], ["web", "web"], ["phone", "phone"]]),
    select("status", "status", [["", "any"], ["active", "active"], ["ended", "ended"]]),
    input("end_reason", "end reason", { size: 14 }),
    select("has_errors", "errors", [["", "any"], ["true", "with errors"], ["false", "without"]]),
    el("label", {}, "from", el("input", { name: "from", type: "datetime-local", value: local("from") })),
    el("label", {}, "to", el("input", { name: "to", type: "datetime-local", value: local("to") })),
    el("button", { type: "submit" }, "Apply"),
  );
}

function row(call) {
  const open = () => { location.hash = `#/call/${encodeURIComponent(call.call_id)}`; };
  return el("tr", { class: "clickable", "data-call": call.call_id, onclick: open },
    el("td", {}, when(call.started_at)),
    el("td", {}, el("a", { href: `#/call/${encodeURIComponent(call.call_id)}` }, call.call_id)),
    el("td", {}, call.robot),
    el("td", {}, dash(call.channel)),
    el("td", { class: "caller" }, dash(call.caller)),
    el("td", {}, call.status === "active" ? el("span", { class: "badge" }, "live") : seconds(call.duration_sec)),
    el("td", {}, call.turns),
    el("td", {}, call.barge_ins),
    el("td", {}, call.errors ? el("span", { class: "badge err" }, call.errors) : "0"),
    el("td", {}, ms(call.voice_to_voice_p50_ms)),
    el("td", {}, dash(call.end_reason)),
  );
}

export async function showCalls(view, params, state) {
  const operator = state.role === "operator";
  const form = filterForm(params, operator);
  const body = el("tbody", { id: "calls" });
  const more = el("button", { id: "more", hidden: true }, "More");
  const note = el("p", { class: "muted" });
  view.replaceChildren(form,
    el("table", {},
      el("thead", {}, el("tr", {}, ["started", "call", "robot", "channel", "caller", "length", "turns",
        "barge-ins", "errors", "voice→voice p50", "end reason"].map((h) => el("th", {}, h)))),
      body),
    more, note);

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const name of FIELDS) {
      const field = form.elements[name];
      if (!field || !field.value) continue;
      // datetime-local is the browser's local time: sent as an instant
      next.set(name, field.type === "datetime-local" ? new Date(field.value).toISOString() : field.value);
    }
    location.hash = `#/calls?${next}`;
  });

  const query = new URLSearchParams();
  for (const name of FIELDS) if (params.get(name)) query.set(name, params.get(name));
  async function page(before, beforeId) {
    const q = new URLSearchParams(query);
    if (before) { q.set("before", before); q.set("before_id", beforeId); }
    const answer = await getJson(`/calls?${q}`);
    if (answer.error) { note.textContent = answer.error; note.className = "error"; return; }
    body.append(...answer.calls.map(row));
    note.textContent = body.children.length ? "" : "no calls match";
    more.hidden = !answer.next_before;
    more.onclick = () => page(answer.next_before, answer.next_before_id);
  }
  await page();
  return null;
}
