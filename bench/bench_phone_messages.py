"""What a phone turn costs NATS in messages: everything through the server, per turn, by kind.

The same platform and callers as ``bench/bench_phone_cost.py`` (FreeSWITCH peer → gateway-fs →
NATS → vad, asr, prompt-router, llm, tts on the instant engines → recorder on PostgreSQL and
Redis). A subscriber to ``>`` sees every message the server routes: each publish, and each
JetStream delivery to a pull consumer (it goes to the consumer's inbox, which ``>`` matches, and
carries the stream's subject and a ``$JS.ACK`` reply), each ack and each pull request. Counts are
counts: unlike CPU time they do not depend on what else runs on the machine, so one run says how a
change moved the per-turn traffic.

    .venv/bin/python bench/bench_phone_messages.py [--calls 10] [--seconds 12]

Prints, per turn (a turn: one ``asr.final`` published), the messages besides the caller's audio
by kind, the stored events published by type, and the deliveries per consumer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import uuid as uuidlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository's root is the import root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nats.aio.msg import Msg

from bench.bench_phone import DEFAULT_POSTGRES, DEFAULT_REDIS, PhoneStack, Recorder
from bench.phone_load import caller_speech, run_call
from voiceplatform.wire import WireError, decode


@dataclass
class Traffic:
    """Messages seen by a ``>`` subscriber, sorted into kinds."""

    kinds: Counter[str] = field(default_factory=Counter)
    published: Counter[str] = field(default_factory=Counter)  # per-call events by message type
    delivered: Counter[str] = field(default_factory=Counter)  # JetStream deliveries by consumer
    delivered_types: Counter[tuple[str, str]] = field(default_factory=Counter)  # (consumer, type)

    def see(self, msg: Msg) -> None:
        subject, reply = msg.subject, msg.reply or ""
        if subject.startswith("$JS.ACK."):
            self.kinds["acks"] += 1
        elif subject.startswith("$JS.API.CONSUMER.MSG.NEXT."):
            self.kinds["pull requests"] += 1
        elif subject.startswith("vp.call.") and ".audio." in subject:
            self.kinds["caller audio"] += 1
        elif subject.startswith("vp.call."):
            kind = _type_of(msg.data)
            if reply.startswith("$JS.ACK."):
                consumer = reply.split(".")[3]
                self.kinds["deliveries"] += 1
                self.delivered[consumer] += 1
                self.delivered_types[(consumer, kind)] += 1
            else:
                self.kinds["events published"] += 1
                self.published[kind] += 1
        elif subject.startswith(("$KV.", "$JS.API.DIRECT.GET.")):
            self.kinds["key-value"] += 1
        elif subject.startswith("_INBOX."):
            self.kinds["replies"] += 1
        else:
            self.kinds["other (presence, heartbeats, API)"] += 1

    @property
    def turns(self) -> int:
        return self.published["asr.final"]

    def besides_audio(self) -> int:
        return sum(n for kind, n in self.kinds.items() if kind != "caller audio")


def _type_of(data: bytes) -> str:
    try:
        return str(type(decode(data)).__struct_config__.tag)
    except WireError:
        return "malformed"


async def measure(calls: int, seconds: float, postgres: str, redis: str) -> Traffic:
    with tempfile.TemporaryDirectory(prefix="vp-bench-messages-") as tmp:
        root, tag = Path(tmp), uuidlib.uuid4().hex[:8]
        stack = PhoneStack(root, "procs", 25, Recorder(postgres, redis, root / "recorder", tag), tag=tag)
        try:
            await stack.start()
            assert stack.peer is not None and stack.bus is not None
            speech = caller_speech(0)
            warm = stack.plan(0, speech)
            warm.uuid, warm.seconds = f"{warm.uuid}-warmup", 5.0
            await run_call(stack.peer, warm, None)  # caches the greeting; not counted
            traffic = Traffic()

            async def see(msg: Msg) -> None:
                traffic.see(msg)

            everything = await stack.bus.client.subscribe(">", cb=see)
            plans = []
            for i in range(calls):
                plan = stack.plan(1, speech)
                plan.uuid, plan.seconds, plan.caller = f"{plan.uuid}-{i:04d}", seconds, f"79990{i:06d}"
                plans.append(plan)
            await asyncio.gather(*(run_call(stack.peer, plan, None) for plan in plans))
            await asyncio.sleep(3.0)  # the recorder's last batches and acks
            await everything.unsubscribe()
            return traffic
        finally:
            await stack.stop()


def report(traffic: Traffic) -> str:
    turns = max(traffic.turns, 1)
    lines = [f"{traffic.turns} turns; messages through nats-server per turn:"]
    lines += [f"  {kind:<36} {n / turns:7.1f}" for kind, n in traffic.kinds.most_common()]
    lines.append(f"  {'besides caller audio':<36} {traffic.besides_audio() / turns:7.1f}")
    lines.append("per-call events published per turn, by type (stored or not):")
    lines += [f"  {kind:<36} {n / turns:7.2f}" for kind, n in traffic.published.most_common()]
    lines.append("JetStream deliveries per turn, by consumer:")
    lines += [f"  {consumer:<36} {n / turns:7.2f}" for consumer, n in traffic.delivered.most_common()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=10, help="concurrent calls")
    parser.add_argument("--seconds", type=float, default=12.0, help="each call's length")
    args = parser.parse_args()
    from voiceplatform.logging import configure_logging

    configure_logging("bench", "WARNING", json=True)
    postgres = os.environ.get("POSTGRES_DSN", DEFAULT_POSTGRES)
    redis = os.environ.get("REDIS_URL", DEFAULT_REDIS)
    print(report(asyncio.run(measure(args.calls, args.seconds, postgres, redis))))


if __name__ == "__main__":
    main()
