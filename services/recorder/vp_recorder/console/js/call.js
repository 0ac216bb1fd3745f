// One call: facts, the recording (player), the latency waterfall, the transcript with barge-ins and
// prompt switches, providers, usage and cost, and stage errors with their causes. The read-only role
// gets the facts and figures only (the API refuses it the transcript and the recording).
import { getJson, request } from "./api.js";
import { dash, el, ms, seconds, when } from "./dom.js";
import { waterfall } from "./waterfall.js";
import { usageTable } from "./usage.js";

function facts(call, doc) {
  const pairs = [
    ["robot", call.robot], ["channel", call.channel], ["caller", dash(call.caller)], ["status", call.status],
    ["started", when(call.started_at)], ["length", seconds(call.duration_sec)],
    ["end reason", dash(call.end_reason)], ["turns", call.turns], ["barge-ins", call.barge_ins],
    ["errors", call.errors], ["last prompt", dash(call.last_prompt)],
    ["voice→voice p50 / max", `${ms(call.voice_to_voice_p50_ms)} / ${ms(call.voice_to_voice_max_ms)}`],
  ];
  if (doc && doc.transferred_to) pairs.push(["transferred to", doc.transferred_to]);
  return el("dl", { class: "facts", id: "facts" }, pairs.map(([k, v]) => [el("dt", {}, k), el("dd", { "data-fact": k }, v)]));
}

async function recordingPlayer(callId, doc) {
  const section = el("section", { id: "recording" }, el("h3", {}, "Recording"));
  const kept = (doc.recordings || []).find((r) => r.url);
  if (!kept) {
    const gone = (doc.recordings || []).find((r) => r.deleted_at);
    const open = (doc.recordings || []).find((r) => r.stopped_offset_ms === null);
    const why = gone ? `deleted ${when(gone.deleted_at)} (retention)`
      : open ? "being recorded: playable once the call has ended" : "no recording of this call";
    section.append(el("p", { class: "muted" }, why));
    return section;
  }
  // <audio> cannot send a bearer token: the file is fetched with it and played from memory
  const audio = el("audio", { controls: true, preload: "auto" });
  section.append(audio, el("p", { class: "muted" },
    `${kept.channels === 2 ? "stereo: caller left, robot right" : "FreeSWITCH recording"} · ${ms(kept.duration_ms)}`));
  const response = await request(kept.url);
  if (response.ok) audio.src = URL.createObjectURL(await response.blob());
  else section.append(el("p", { class: "error" }, `recording: ${response.status}`));
  return section;
}

function transcript(doc) {
  const list = el("ol", { class: "transcript", id: "transcript" });
  for (const s of doc.segments) {
    const who = s.role === "user" ? "Caller" : "Robot";
    const item = el("li", { class: s.role, "data-turn": s.turn_id },
      el("strong", {}, `${who}: `),
      s.interrupted ? [el("span", {}, s.played_text || ""), " ", el("span", { class: "cut" }, s.text.slice((s.played_text || "").length))]
        : s.text || el("span", { class: "muted" }, "(nothing recognized)"),
      s.interrupted ? el("span", { class: "badge" }, "barge-in") : null,
      s.backchannel ? el("span", { class: "badge" }, "backchannel") : null,
      s.prompt ? el("span", { class: "muted" }, ` · ${s.prompt}`) : null,
      s.provider ? el("span", { class: "muted" }, ` · ${s.provider}`) : null);
    list.append(item);
  }
  return el("section", {}, el("h3", {}, "Transcript"), list);
}

function events(doc) {
  const meta = doc.metadata;
  const switches = meta.prompt_switches.map((s) =>
    el("li", {}, `${seconds(s.offset_ms / 1000)} ${dash(s.from)} → ${s.to}`, s.matched ? ` (matched "${s.matched}")` : ""));
  const errors = meta.stage_errors.map((e) =>
    el("li", { class: "error" }, `${seconds((e.offset_ms || 0) / 1000)} ${e.stage}: ${e.kind}`,
      e.detail ? ` — ${e.detail}` : "", e.retryable ? " (retryable)" : "", e.turn_id ? ` · turn ${e.turn_id}` : ""));
  const cuts = doc.segments.filter((s) => s.interrupted).map((s) =>
    el("li", {}, `turn ${s.turn_id}: heard "${s.played_text}"`));
  return el("section", { id: "events" },
    el("h3", {}, "Barge-ins, prompt switches, errors"),
    el("p", {}, `barge-ins: ${meta.barge_ins}`), el("ul", {}, cuts),
    el("p", {}, `prompt switches: ${switches.length}`), el("ul", {}, switches),
    el("p", {}, `errors: ${errors.length}`), el("ul", { id: "errors" }, errors),
    el("p", {}, `providers: ASR ${dash(meta.providers.asr.join(", "))}; LLM ${dash(meta.providers.llm.join(", "))}`));
}

function switchMoments(doc, turns) {
  // the router's prompt switch of a turn, in ms from the end of that turn's caller speech
  const at = {};
  for (const s of (doc ? doc.metadata.prompt_switches : [])) {
    const turn = turns.find((t) => t.turn_id === s.turn_id && t.speech_end_at);
    if (turn) at[s.turn_id] = s.ts_ms - Date.parse(turn.speech_end_at);
  }
  return at;
}

export async function showCall(view, callId, state) {
  const operator = state.role === "operator";
  const [figures, doc] = await Promise.all([
    getJson(`/calls/${encodeURIComponent(callId)}/turns`),
    operator ? getJson(`/calls/${encodeURIComponent(callId)}`) : Promise.resolve(null),
  ]);
  if (figures.error) {
    view.replaceChildren(el("p", { class: "error" }, figures.error));
    return null;
  }
  const parts = [
    el("p", {}, el("a", { href: "#/calls" }, "← calls")),
    el("h2", {}, callId),
    el("section", {}, facts(figures.call, doc && !doc.error ? doc : null)),
  ];
  const transcriptDoc = doc && !doc.error ? doc : null;
  if (transcriptDoc) parts.push(await recordingPlayer(callId, transcriptDoc));
  parts.push(el("section", { id: "latency" }, el("h3", {}, "Latency per turn"),
    waterfall(figures.turns, switchMoments(transcriptDoc, figures.turns))));
  if (transcriptDoc) {
    parts.push(transcript(transcriptDoc), events(transcriptDoc),
      el("section", { id: "usage" }, el("h3", {}, "Usage and cost"), usageTable(transcriptDoc.metadata.usage)));
  } else {
    parts.push(el("section", { id: "no-transcript" }, el("p", { class: "muted" },
      doc && doc.error ? doc.error : "transcript, recording and usage need the operator token")));
  }
  view.replaceChildren(...parts);
  return null;
}
