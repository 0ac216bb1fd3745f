"""What a conversation's client log says about turn-taking: pure functions over ``CallLog``.

Event parsing is tolerant: only ``type``, ``turn_id``, ``text``, ``reason``, ``merged``,
``interrupted``, ``bot_text`` and ``voice_to_voice_ms`` are read, unknown event types are ignored, and
events such as ``{"type": "turn.cancelled", "turn_id": .., "reason": ..}`` (or any type naming an
interrupt/cancel) are understood as the gateway dropping that turn.

Definitions (per plain/pause utterance, whose window runs from its first frame to 0.5 s after its
last; a caller turn belongs to the window its ``vad.speech_started`` arrived in):
- caller turns: turns with a non-empty ``asr.final``, less those merged into a later turn
  (``asr.final.merged``) or cancelled as ``continued``/``backchannel``; more than one = a split;
- platform text: those turns' ``asr.final`` texts joined;
- replies: the utterance's caller turns whose robot audio reached the client (robot audio frames
  are owned by the turn of the latest ``bot.sentence`` before them) or whose ``turn.metrics`` says it
  played; the reply text is the last reply's ``bot_text`` (else its sentences);
- stale reply: a bot turn with audio arriving more than 0.3 s after a newer plain/pause caller
  turn's ``vad.speech_started`` reached the client;
- backchannel cut: the bot turn playing when the backchannel began got a ``playback.flush``, an
  interrupt/cancel event, or a ``turn.metrics`` with ``interrupted`` during the backchannel (+1.5 s).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Any

import jiwer
from num2words import num2words

from bench.conversation_call import CallLog, Played

WINDOW_TAIL_S = 0.5
STALE_GRACE_S = 0.3
BACKCHANNEL_TAIL_S = 1.5
DROPPING_REASONS = ("continued", "backchannel", "merged")


def normalize(text: str) -> str:
    """Lower case, ё→е, digits spelled out (Russian), punctuation and hyphens to spaces."""
    t = text.lower()
    t = re.sub(r"\d+", lambda m: " " + num2words(int(m.group()), lang="ru") + " ", t)
    t = t.replace("ё", "е")
    t = re.sub(r"[^\w\s]|_", " ", t)
    return " ".join(t.split())


def wer(refs: list[str], hyps: list[str]) -> float | None:
    pairs = [(normalize(r), normalize(h)) for r, h in zip(refs, hyps, strict=True) if normalize(r)]
    if not pairs:
        return None
    return round(float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])), 4)


def reply_matches(reply: str, expected: list[str]) -> bool:
    r = normalize(reply)
    return bool(r) and any(e and (e == r or e in r or r in e) for e in map(normalize, expected))


def expected_replies(dialog: dict[str, Any], state: str, keyword: str) -> list[str]:
    """Replies of the intents in ``state`` (or the global list) that have ``keyword`` (a prefix)."""
    states = dialog.get("states", {})
    pools = [dialog.get("global", [])] if state == "global" else [states.get(state, {}).get("intents", [])]
    pools.append(dialog.get("global", []))
    key = normalize(keyword)
    out = []
    for pool in pools:
        for intent in pool if isinstance(pool, list) else []:
            words = [normalize(str(k)) for k in intent.get("keywords", [])]
            if any(w == key or w.startswith(key) for w in words) and intent.get("reply"):
                out.append(str(intent["reply"]))
        if out:
            break
    if not out:
        out = _builtin_replies(dialog, key)
    return out


def _builtin_replies(dialog: dict[str, Any], key: str) -> list[str]:
    """Replies of the script engine's built-in intents (operator, goodbye) for ``key``."""
    from vp_llm.script_loading import BUILTIN_DEFAULTS

    out: list[str] = []
    for kind, spec in BUILTIN_DEFAULTS.items():
        if kind == "repeat":
            continue  # the right answer to "repeat" is the previous reply (added by the caller)
        spec = {**spec, **dialog.get("builtins", {}).get(kind, {})}
        words = [normalize(str(k)) for k in spec.get("keywords", [])]
        if any(w == key or w.startswith(key) for w in words):
            out += [str(spec[k]) for k in ("reply", "unavailable") if spec.get(k)]
    return out


@dataclass
class UttResult:
    uid: str
    kind: str
    voice: str
    rate: int
    ref: str
    label: str = ""
    hyp: str = ""
    caller_turns: int = 0
    replies: int = 0
    reply_text: str = ""
    intent_ok: bool | None = None  # None: no expected reply known
    v2v_ms: float | None = None
    stale: int = 0
    # backchannels
    over_speech: bool = False
    cut: bool = False


@dataclass
class CallFacts:
    starts: dict[str, float] = field(default_factory=dict)  # caller turn -> vad.speech_started arrival
    finals: dict[str, str] = field(default_factory=dict)
    dropped: set[str] = field(default_factory=set)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    sentences: dict[str, list[str]] = field(default_factory=dict)
    owner_times: list[float] = field(default_factory=list)  # bot.sentence arrivals, sorted
    owner_ids: list[str] = field(default_factory=list)
    audio_by_turn: dict[str, list[float]] = field(default_factory=dict)
    cut_events: list[tuple[float, str]] = field(default_factory=list)  # (t, bot turn) flush/interrupt
    order: list[tuple[float, str, float]] = field(default_factory=list)  # (first sentence, turn, end)


def collect(log: CallLog) -> CallFacts:
    f = CallFacts()
    for e in log.events:
        kind, tid, t = str(e.get("type", "")), str(e.get("turn_id", "")), float(e.get("t", 0.0))
        if kind == "vad.speech_started" and tid:
            f.starts.setdefault(tid, t)
        elif kind == "asr.final" and tid:
            f.finals[tid] = str(e.get("text", "") or "")
            merged = e.get("merged")
            if isinstance(merged, list):
                f.dropped.update(str(m) for m in merged if m and m != tid)
        elif kind == "bot.sentence" and tid:
            f.sentences.setdefault(tid, []).append(str(e.get("text", "")))
            f.owner_times.append(t)
            f.owner_ids.append(tid)
        elif kind == "turn.metrics" and tid:
            f.metrics[tid] = e
            if e.get("interrupted") or e.get("outcome") in ("cut",):
                f.cut_events.append((t, tid))
            if e.get("outcome") in DROPPING_REASONS:
                f.dropped.add(tid)
        elif kind == "playback.flush" and tid:
            f.cut_events.append((t, tid))
        elif ("cancel" in kind or "interrupt" in kind) and tid:
            reason = str(e.get("reason", ""))
            if reason in DROPPING_REASONS:
                f.dropped.add(tid)
            if reason in ("", "barge_in"):
                f.cut_events.append((t, tid))
    # the gateway plays bot turns one after another: a turn owns the audio from its first sentence
    # until it completes (turn.metrics) or is cut, unless an earlier turn is still playing
    ends: dict[str, float] = {}
    for e in log.events:
        kind, tid = str(e.get("type", "")), str(e.get("turn_id", ""))
        if tid and (kind in ("turn.metrics", "playback.flush") or "cancel" in kind or "interrupt" in kind):
            ends.setdefault(tid, float(e.get("t", 0.0)))
    first: dict[str, float] = {}
    for t, tid in zip(f.owner_times, f.owner_ids, strict=True):
        first.setdefault(tid, t)
    f.order = sorted((t, tid, ends.get(tid, float("inf"))) for tid, t in first.items())
    for a in log.audio:
        f.audio_by_turn.setdefault(owner_at(f, a), []).append(a)
    return f


def owner_at(f: CallFacts, t: float) -> str:
    playing = [tid for start, tid, end in f.order if start <= t < end + 0.05]
    if playing:
        return playing[0]
    i = bisect.bisect_right(f.owner_times, t) - 1
    return f.owner_ids[i] if i >= 0 else "greeting"


def analyze_call(
    log: CallLog,
    texts: dict[str, tuple[str, str]],
    dialog: dict[str, Any],
    labels: dict[str, tuple[str, str]],
) -> tuple[list[UttResult], int]:
    """Per played utterance results, and the number of caller turns outside every utterance.

    ``texts``: uid -> (reference text, label)."""
    f = collect(log)
    windows = [(p.t_start, p.t_end + WINDOW_TAIL_S) for p in log.played]
    turns_of: list[list[str]] = [[] for _ in log.played]
    spurious = 0
    for tid, t in sorted(f.starts.items(), key=lambda kv: kv[1]):
        # backchannels overlap their parent's window end: the latest window that contains t wins
        hits = [i for i, (a, b) in enumerate(windows) if a <= t <= b]
        if hits:
            turns_of[hits[-1]].append(tid)
        else:
            spurious += 1
    speaking = [p for p in log.played if p.kind != "backchannel"]
    new_turn_times = sorted(
        f.starts[tid] for i, p in enumerate(log.played) if p.kind != "backchannel" for tid in turns_of[i]
    )
    previous_reply = ""
    results: list[UttResult] = []
    for i, p in enumerate(log.played):
        ref, label = texts[p.uid]
        r = UttResult(p.uid, p.kind, p.voice, p.rate, ref, label)
        tids = turns_of[i]
        live = [t for t in tids if t not in f.dropped and f.finals.get(t, "").strip()]
        r.caller_turns = len(live)
        r.hyp = " ".join(f.finals[t] for t in live)
        replied = [t for t in tids if f.audio_by_turn.get(t) or _played(f.metrics.get(t))]
        r.replies = len(replied)
        if replied:
            last = replied[-1]
            m = f.metrics.get(last) or {}
            r.reply_text = str(m.get("bot_text") or " ".join(f.sentences.get(last, [])))
        for tid in tids:
            later = [t for t in new_turn_times if t > f.starts[tid]]
            if later and any(a > later[0] + STALE_GRACE_S for a in f.audio_by_turn.get(tid, [])):
                r.stale += 1
        if p.kind == "backchannel":
            bot = owner_at(f, p.t_start)
            r.over_speech = any(p.t_start - 0.3 <= a <= p.t_start for a in f.audio_by_turn.get(bot, []))
            r.cut = r.over_speech and any(
                tid == bot and p.t_start <= t <= p.t_end + BACKCHANNEL_TAIL_S for t, tid in f.cut_events
            )
        else:
            nxt = next((q.t_start for q in speaking if q.t_start > p.t_start), float("inf"))
            own = sorted(a for tid in tids for a in f.audio_by_turn.get(tid, []) if a > p.t_voiced_end)
            # the reply's own first frame; any robot audio if no frame could be attributed to a turn
            first = own[0] if own else next((a for a in log.audio if p.t_voiced_end < a < nxt), None)
            r.v2v_ms = round((first - p.t_voiced_end) * 1000) if first is not None else None
            if label:
                state, keyword = labels[label]
                expected = expected_replies(dialog, state, keyword)
                if label == "repeat" and previous_reply:
                    expected.append(previous_reply)
                r.intent_ok = reply_matches(r.reply_text, expected) if expected else None
            previous_reply = r.reply_text or previous_reply
        results.append(r)
    return results, spurious


def _played(m: dict[str, Any] | None) -> bool:
    return m is not None and m.get("voice_to_voice_ms") is not None and bool(m.get("bot_text"))


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))])


def summarize(
    results: list[UttResult], engine_hyps: dict[str, str], spurious: int, calls: int
) -> dict[str, Any]:
    """The report's metric fields for one set of utterances (``engine_hyps``: key uid|voice|rate)."""
    speech = [r for r in results if r.kind != "backchannel"]
    bcs = [r for r in results if r.kind == "backchannel"]
    over = [r for r in bcs if r.over_speech]
    v2v = [r.v2v_ms for r in speech if r.v2v_ms is not None]
    scored = [r for r in speech if r.intent_ok is not None]
    keys = [f"{r.uid}|{r.voice}|{r.rate}" for r in speech]
    with_engine = [(r, engine_hyps[k]) for r, k in zip(speech, keys, strict=True) if k in engine_hyps]
    return {
        "calls": calls,
        "utterances": len(speech),
        "wer_platform": wer([r.ref for r in speech], [r.hyp for r in speech]),
        "wer_engine": wer([r.ref for r, _ in with_engine], [h for _, h in with_engine]),
        "wer_platform_plain": wer(
            [r.ref for r in speech if r.kind == "plain"], [r.hyp for r in speech if r.kind == "plain"]
        ),
        "wer_platform_pause": wer(
            [r.ref for r in speech if r.kind == "pause"], [r.hyp for r in speech if r.kind == "pause"]
        ),
        "split_rate": round(sum(r.caller_turns > 1 for r in speech) / len(speech), 4) if speech else None,
        "split_rate_pause": _share([r.caller_turns > 1 for r in speech if r.kind == "pause"]),
        "stale_replies": sum(r.stale for r in results),
        "replies_per_utterance": round(sum(r.replies for r in speech) / len(speech), 3) if speech else None,
        "one_reply_share": _share([r.replies == 1 for r in speech]),
        "no_reply": sum(r.replies == 0 for r in speech),
        "backchannels": len(bcs),
        "backchannels_over_speech": len(over),
        "backchannel_cuts": sum(r.cut for r in over),
        "backchannel_replies": sum(r.replies for r in bcs),
        "v2v_ms": {"p50": pct(v2v, 50), "p95": pct(v2v, 95), "p99": pct(v2v, 99), "n": len(v2v)},
        "intent_accuracy": _share([bool(r.intent_ok) for r in scored]),
        "intent_scored": len(scored),
        "spurious_turns": spurious,
    }


def _share(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


METRIC_FIELDS = tuple(summarize([], {}, 0, 0))
__all__ = ["METRIC_FIELDS", "Played", "UttResult", "analyze_call", "normalize", "summarize", "wer"]
