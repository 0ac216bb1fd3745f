"""Follow calls as they happen: a minimal subscriber to the public call events (contract v1).

Needs only nats-py (``pip install nats-py``) and the standard library; the contract is described in
docs/call_events.md and docs/asyncapi.yaml.

Run it next to a running platform::

    python examples/call_events_subscriber.py                        # NATS_URL or nats://127.0.0.1:4222
    python examples/call_events_subscriber.py --url nats://10.0.0.5:4222 --count 20
    python examples/call_events_subscriber.py --call-id web-0001     # one call only

A platform with NATS security on (``vp up``, compose) lets integrators in as the read-only user
``call-events``: set ``NATS_USER=call-events`` and ``NATS_PASSWORD`` (``vp up``: the ``call-events``
entry of ``.vp/credentials.json``; compose: ``NATS_PASSWORD_CALL_EVENTS`` in deploy/compose/.env).

It prints one line per event, for example::

    call.started web-0001 robot=pipeline_russian channel=web
    turn.completed web-0001 v2v=812ms "у меня собака" -> "Для собак у нас есть корм."
    call.ended web-0001 reason=hangup duration=42.0s turns=5 barge_ins=1 v2v_p50=790ms

and stops after ``--count`` events or on Ctrl-C (exit status 0). Delivery is at least once: an event
may arrive twice, with the same ``id``, so the subscriber remembers recent ids and skips repeats.
When it is ready it says so on stderr (``subscribed to call_events.>``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections import OrderedDict
from typing import Any

import nats

SUBJECT = "call_events.>"
DEFAULT_URL = "nats://127.0.0.1:4222"
REMEMBERED_IDS = 10_000  # enough to cover any redelivery window; older ids are forgotten


class RecentIds:
    """The last ``limit`` event ids seen: ``add`` is False for an id already seen."""

    def __init__(self, limit: int = REMEMBERED_IDS) -> None:
        self._limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, event_id: str) -> bool:
        if event_id in self._ids:
            return False
        self._ids[event_id] = None
        if len(self._ids) > self._limit:
            self._ids.popitem(last=False)
        return True


def _ms(value: Any) -> str:
    return f"{value}ms" if isinstance(value, int) else "-"


def describe(event: dict[str, Any]) -> str:
    """One line for one event; unknown types and fields are shown, not rejected."""
    kind, call_id, data = event.get("type", "?"), event.get("call_id", "?"), event.get("data") or {}
    if kind == "call.started":
        details = f"robot={data.get('robot')} channel={data.get('channel')}"
    elif kind == "turn.completed":
        latency = data.get("latency") or {}
        bot_text = data.get("played_text") if data.get("interrupted") else data.get("bot_text")
        said = json.dumps(data.get("user_text", ""), ensure_ascii=False)
        answered = json.dumps(bot_text or "", ensure_ascii=False)
        details = f"v2v={_ms(latency.get('voice_to_voice_ms'))} {said} -> {answered}"
        if data.get("interrupted"):
            details += " (interrupted)"
    elif kind == "prompt.switched":
        details = f"{data.get('from_prompt')} -> {data.get('to_prompt')} matched={data.get('matched')!r}"
    elif kind == "barge_in":
        heard = json.dumps(data.get("played_text", ""), ensure_ascii=False)
        details = f"turn={data.get('turn_id')} after {_ms(data.get('played_ms'))} heard {heard}"
    elif kind == "call.ended":
        summary = data.get("summary") or {}
        v2v = summary.get("voice_to_voice_ms") or {}
        details = (
            f"reason={data.get('reason')} duration={data.get('duration_ms', 0) / 1000:.1f}s "
            f"turns={data.get('turns')} barge_ins={summary.get('barge_ins', '-')} "
            f"v2v_p50={_ms(v2v.get('p50'))}"
        )
    else:
        details = json.dumps(data, ensure_ascii=False)
    return f"{kind} {call_id} {details}"


async def follow(url: str, count: int | None, call_id: str | None) -> None:
    done = asyncio.Event()
    seen = RecentIds()
    printed = 0

    async def on_message(msg: Any) -> None:
        nonlocal printed
        if count is not None and printed >= count:
            return  # stopping: events still in flight are not ours to print
        try:
            event = json.loads(msg.data)
        except ValueError:
            print(f"skipped a message that is not JSON on {msg.subject}", file=sys.stderr)
            return
        if not isinstance(event, dict) or (call_id and event.get("call_id") != call_id):
            return
        event_id = event.get("id")
        if isinstance(event_id, str) and not seen.add(event_id):
            return  # the same event delivered again
        print(describe(event), flush=True)
        printed += 1
        if count is not None and printed >= count:
            done.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    login: dict[str, Any] = {}
    if os.environ.get("NATS_USER"):
        login = {"user": os.environ["NATS_USER"], "password": os.environ.get("NATS_PASSWORD", "")}
    nc = await nats.connect(url, name="call-events-subscriber", **login)
    try:
        await nc.subscribe(SUBJECT, cb=on_message)
        await nc.flush()  # the server has the subscription: events from now on reach us
        print(f"subscribed to {SUBJECT}", file=sys.stderr, flush=True)
        await done.wait()
    finally:
        await nc.drain()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the public call events of a voice platform.")
    parser.add_argument("--url", default=os.environ.get("NATS_URL", DEFAULT_URL), help="NATS server URL")
    parser.add_argument("--count", type=int, default=None, help="exit after this many events")
    parser.add_argument("--call-id", default=None, help="only the events of this call")
    args = parser.parse_args(argv)
    asyncio.run(follow(args.url, args.count, args.call_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
