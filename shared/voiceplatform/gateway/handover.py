"""What the person taking a transferred call is told: the call's summary, as flat text values.

The phone gateway sets each entry as a channel variable ``vp_<key>`` (``uuid_setvar``) before
``uuid_transfer``, so the dialplan, a queue (mod_callcenter) or the agent's screen can read them.
Values are one line, without quotes or backslashes (FreeSWITCH's API argument splitting would eat
them) and without ``$`` or braces (nothing in them is ever expanded), capped in length.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from voiceplatform.gateway.turns import Turn, TurnKind, TurnState

LAST_TURNS = 3
MAX_VALUE_CHARS = 400
# quotes and backslashes: the API's argument splitting; "$" and braces: variable expansion where a
# dialplan uses the value (``${vp_intent}`` in an export or a dial string)
_UNSAFE = re.compile(r"[\r\n\t'\"\\${}]+")


def clean_value(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """One safe line of at most ``limit`` characters."""
    return " ".join(_UNSAFE.sub(" ", text).split())[:limit]


def call_summary(
    turns: Iterable[Turn], *, call_id: str, robot: str, caller: str, intent: str, reason: str
) -> dict[str, str]:
    """Keys: call_id, robot, caller, intent, reason, last_user, last_robot, dialogue (the last
    turns as ``Клиент: … / Робот: …``), turns (how many caller turns there were)."""
    said = [
        t for t in turns if t.kind is not TurnKind.NO_INPUT and (t.user_text or t.played_text or t.bot_text)
    ]
    caller_turns = [t for t in said if t.kind is TurnKind.CALLER and t.user_text]
    lines: list[str] = []
    for turn in said[-LAST_TURNS:]:
        if turn.kind is TurnKind.CALLER and turn.user_text:
            lines.append(f"Клиент: {turn.user_text}")
        robot_text = turn.played_text if turn.state is TurnState.CUT else turn.bot_text
        if robot_text:
            lines.append(f"Робот: {robot_text}")
    summary = {
        "call_id": call_id,
        "robot": robot,
        "caller": caller,
        "intent": intent,
        "reason": reason,
        "last_user": caller_turns[-1].user_text if caller_turns else "",
        "last_robot": next((t.bot_text for t in reversed(said) if t.bot_text), ""),
        "dialogue": " / ".join(lines),
        "turns": str(len(caller_turns)),
    }
    return {key: clean_value(value) for key, value in summary.items()}
