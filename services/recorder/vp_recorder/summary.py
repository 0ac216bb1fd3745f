"""The summary of a whole call, carried by the public ``call.ended`` event (``data.summary``).

Pure: rebuilt from every stored event of the call (``CallEventReader.read_call``), so it is the same
however often it is rebuilt. Events are deduplicated by stream sequence; a turn reported twice (by
``turn_id``) counts once with its last report; per-turn latencies come from ``turn_figures`` only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from voiceplatform.turn_figures import turn_figures
from voiceplatform.wire import CallStarted, ControlInterrupt, PromptSwitched, StageError, TurnMetrics
from vp_recorder.stored import StoredEvent
from vp_recorder.usage import usage_rows


def nearest_rank(sorted_values: Sequence[int], fraction: float) -> int:
    """The nearest-rank percentile: always a value that was measured (no interpolation)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(len(sorted_values) * fraction))
    return sorted_values[rank - 1]


def _in_stream_order(events: Sequence[StoredEvent]) -> list[StoredEvent]:
    by_seq = {event.seq: event for event in events}
    return [by_seq[seq] for seq in sorted(by_seq)]


def call_summary(events: Sequence[StoredEvent]) -> dict[str, Any]:
    """Counts and figures of one call.

    - ``turns``: distinct turns reported by ``turn.metrics`` (the greeting is one);
    - ``user_turns``: those with recognized caller speech (non-empty ``user_text``);
    - ``barge_ins``: distinct bot turns the caller interrupted;
    - ``errors``: ``stage.error`` events; ``prompt_switches``: ``prompt.switched`` events;
    - ``voice_to_voice_ms``: ``{"p50", "max"}`` over the turns that have one, None when none has;
    - ``robot``, ``channel``: from ``call.started`` (None when it was not recorded);
    - ``last_prompt``: the prompt the call ended on, None when it never switched (the robot's default);
    - ``usage``: per stage, provider and model, what the providers were sent or reported
      (``provider.usage`` events recorded by then; see :func:`vp_recorder.usage.usage_rows`).
    """
    robot: str | None = None
    channel: str | None = None
    last_prompt: str | None = None
    turns: dict[str, TurnMetrics] = {}
    interrupted_turns: set[str] = set()
    errors = 0
    prompt_switches = 0
    stream = _in_stream_order(events)
    for event in stream:
        msg = event.message
        if isinstance(msg, CallStarted):
            robot, channel = msg.robot, msg.channel
        elif isinstance(msg, TurnMetrics):
            turns[msg.turn_id] = msg
        elif isinstance(msg, ControlInterrupt) and msg.reason == "barge_in" and msg.by_turn_id:
            # a caller's barge-in; an interrupt without a caller turn (the call ending) is not one
            interrupted_turns.add(msg.turn_id)
        elif isinstance(msg, StageError):
            errors += 1
        elif isinstance(msg, PromptSwitched):
            prompt_switches += 1
            last_prompt = msg.to_prompt

    voice_to_voice = sorted(
        v2v for m in turns.values() if (v2v := turn_figures(m)["voice_to_voice_ms"]) is not None
    )
    return {
        "turns": len(turns),
        "user_turns": sum(1 for m in turns.values() if m.user_text),
        "barge_ins": len(interrupted_turns),
        "errors": errors,
        "prompt_switches": prompt_switches,
        "voice_to_voice_ms": (
            {"p50": nearest_rank(voice_to_voice, 0.5), "max": voice_to_voice[-1]} if voice_to_voice else None
        ),
        "robot": robot,
        "channel": channel,
        "last_prompt": last_prompt,
        "usage": usage_rows(e.message for e in stream),
    }
