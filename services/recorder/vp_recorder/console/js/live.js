// Live calls: the calls in progress, kept current from the public call events the recorder streams
// (GET /live, server-sent events) as they happen, and the events themselves, newest first.
import { followEvents, getJson } from "./api.js";
import { dash, el, when } from "./dom.js";

const FEED_MAX = 200;

export async function showLive(view, state) {
  const body = el("tbody", { id: "live-calls" });
  const feed = el("ol", { id: "live-feed", reversed: true });
  const status = el("p", { class: "muted", id: "live-status" }, "connecting…");
  view.replaceChildren(
    el("section", {}, el("h3", {}, "Calls in progress"), status,
      el("table", {}, el("thead", {}, el("tr", {}, ["started", "call", "robot", "channel", "caller", "turns", "last event"]
        .map((h) => el("th", {}, h)))), body)),
    el("section", {}, el("h3", {}, "Events"), feed));

  const rows = new Map();
  function upsert(call) {
    let row = rows.get(call.call_id);
    if (!row) {
      row = el("tr", { "data-call": call.call_id },
        el("td", {}, when(call.started_at)),
        el("td", {}, el("a", { href: `#/call/${encodeURIComponent(call.call_id)}` }, call.call_id)),
        el("td", {}, call.robot || "—"), el("td", {}, dash(call.channel)), el("td", { class: "caller" }, dash(call.caller)),
        el("td", { class: "turns" }, call.turns ?? 0), el("td", { class: "last" }, ""));
      rows.set(call.call_id, row);
      body.prepend(row);
    }
    return row;
  }

  const active = await getJson("/calls?status=active&limit=100");
  for (const call of active.calls || []) upsert(call);

  function onEvent(name, data) {
    if (name === "dropped") { status.textContent = `missed ${data} events (slow connection)`; return; }
    if (name !== "call_event") return;
    const event = JSON.parse(data);
    const d = event.data || {};
    if (event.type === "call.started") {
      upsert({ call_id: event.call_id, started_at: new Date(event.ts_ms).toISOString(), robot: d.robot,
        channel: d.channel, caller: state.role === "operator" ? d.caller : null, turns: 0 });
    }
    const row = rows.get(event.call_id);
    if (row) {
      row.querySelector(".last").textContent = event.type;
      if (event.type === "turn.completed") row.querySelector(".turns").textContent = Number(row.querySelector(".turns").textContent) + 1;
      if (event.type === "call.ended") {
        row.classList.add("muted");
        setTimeout(() => { row.remove(); rows.delete(event.call_id); }, 5000);
      }
    }
    const said = d.user_text || d.bot_text ? ` — ${d.user_text || ""} → ${d.bot_text || ""}` : "";
    feed.prepend(el("li", { "data-type": event.type, "data-call": event.call_id },
      `${new Date(event.ts_ms).toLocaleTimeString()} ${event.type} ${event.call_id}${said}`));
    while (feed.children.length > FEED_MAX) feed.lastChild.remove();
  }

  const stop = new AbortController();
  (async () => {
    while (!stop.signal.aborted) {
      try {
        status.textContent = "following call events";
        view.dataset.live = "1";
        await followEvents("/live", onEvent, stop.signal);
      } catch (error) {
        if (stop.signal.aborted) return;
        status.textContent = `disconnected (${error.message}); retrying`;
      }
      await new Promise((r) => setTimeout(r, 2000));
    }
  })();
  return () => stop.abort();
}
