"""`vp load`: every running service instance and its load, as their presence on NATS says it.

Each process announces itself each second (``worker.heartbeat`` on ``vp.svc.<name>.presence``) with
its load per stage (``StageLoad``, ``voiceplatform.load``). This listens for ``--seconds`` and prints
one row per instance and stage: calls owned out of capacity (streaming stages, gateways), the work
queue (pending, taken but unfinished), and the turn time's p50/p95 over the last minute. It connects
as the services do (``NATS_URL``, ``NATS_USER``/``NATS_PASSWORD``, TLS; a user that may read
presence: a gateway's, the recorder's, or the admin).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import msgspec

from voiceplatform import subjects
from voiceplatform.bus import Bus, Envelope
from voiceplatform.wire import Message, WorkerHeartbeat

CONNECT_TIMEOUT_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seconds", type=float, default=2.5, help="how long to listen (presence comes each second)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per instance instead of a table")


async def collect(bus: Bus, seconds: float) -> dict[tuple[str, str], WorkerHeartbeat]:
    """The latest presence of every instance heard within ``seconds``, by (role, instance id)."""
    heard: dict[tuple[str, str], WorkerHeartbeat] = {}

    async def on_presence(env: Envelope) -> Message | None:
        beat = env.message
        if isinstance(beat, WorkerHeartbeat):
            heard[(beat.role, beat.instance_id)] = beat
        return None

    sub = await bus.subscribe(subjects.ANY_PRESENCE, on_presence)
    try:
        await asyncio.sleep(seconds)
    finally:
        await sub.unsubscribe()
    return heard


def rows(heard: dict[tuple[str, str], WorkerHeartbeat]) -> list[dict[str, object]]:
    """One row per instance and stage it reports (an instance without load figures: one row)."""
    out: list[dict[str, object]] = []
    for (role, instance), beat in sorted(heard.items()):
        base: dict[str, object] = {"service": role, "instance": instance, "ready": beat.ready}
        if not beat.load:
            out.append(base | {"stage": role})
        for load in beat.load:
            out.append(base | msgspec.structs.asdict(load))
    return out


def table(found: list[dict[str, object]]) -> str:
    header = ("service", "instance", "ready", "stage", "calls", "queue", "turns/min", "turn p50/p95 ms")
    lines = [header]
    for row in found:
        capacity = row.get("capacity") or 0
        calls = f"{row.get('calls_owned', 0)}/{capacity}" if capacity else "-"
        pending = row.get("queue_pending", -1)
        queue = f"{pending} waiting, {row.get('queue_ack_pending')} taken" if pending != -1 else "-"
        p50, p95 = row.get("turn_p50_ms"), row.get("turn_p95_ms")
        turn = f"{p50}/{p95}" if p50 is not None else "-"
        lines.append(
            (
                str(row["service"]),
                str(row["instance"]),
                "yes" if row["ready"] else "no",
                str(row["stage"]),
                calls,
                queue,
                str(row.get("turns", 0)),
                turn,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    padded = ("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines)
    return "\n".join(line.rstrip() for line in padded)


async def _listen(seconds: float) -> dict[tuple[str, str], WorkerHeartbeat]:
    from voiceplatform.bus.auth import NatsAuth
    from voiceplatform.bus.nats import NatsBus
    from voiceplatform.config import ServiceSettings

    settings = ServiceSettings()
    bus = await asyncio.wait_for(
        NatsBus.connect(settings.nats_url, "vp-load", **NatsAuth.of(settings).options()), CONNECT_TIMEOUT_S
    )
    try:
        return await collect(bus, seconds)
    finally:
        await bus.close()


def run_load(args: argparse.Namespace) -> int:
    from voiceplatform.logging import configure_logging

    configure_logging("vp-load", "ERROR")  # the client's reconnect chatter stays out of the table
    try:
        heard = asyncio.run(_listen(args.seconds))
    except (OSError, TimeoutError, ValueError) as exc:
        print(f"vp load: cannot listen on NATS: {type(exc).__name__}: {exc}"[:300], file=sys.stderr)
        return 1
    if not heard:
        print(f"vp load: no service announced itself within {args.seconds:g} s", file=sys.stderr)
        return 1
    found = rows(heard)
    if args.json:
        for row in found:
            print(json.dumps(row, ensure_ascii=False))
    else:
        print(table(found))
    return 0
