"""Load for the recorder: simulated calls publishing real wire messages as gateways do, and the
recorder run as a process (``python -m vp_recorder``) watched through its /health and JetStream.

Shared by ``bench/bench_recorder.py`` and ``tests/recorder/test_durability.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats.js

from voiceplatform import subjects
from voiceplatform.bus.nats import NatsBus
from voiceplatform.clock import now_ms
from voiceplatform.wire import (
    AsrFinal,
    CallEnded,
    CallStarted,
    ControlInterrupt,
    LlmDone,
    Message,
    TurnMetrics,
)
from voiceplatform_devstack.devinfra import free_port

ROBOT = "bench_recorder"
# wire type -> public event type, for the events SimulatedCall publishes
PUBLIC_TYPES = {
    "call.started": "call.started",
    "turn.metrics": "turn.completed",
    "control.interrupt": "barge_in",
    "call.ended": "call.ended",
}

# ---- simulated gateway traffic (also driven by tests/recorder/test_durability.py) -------------------


@dataclass(frozen=True)
class SimulatedCall:
    """One call's events as a gateway and its workers publish them; every ``barge_in_every``-th turn
    is cut by the caller speaking again (control.interrupt by the next turn, with what was played)."""

    call_id: str
    turns: int
    barge_in_every: int = 3

    def turn_id(self, n: int) -> str:
        return f"{self.call_id}-t{n}"

    def interrupted(self, n: int) -> bool:
        return n % self.barge_in_every == 0

    @staticmethod
    def texts(n: int) -> tuple[str, str, str]:
        """(caller's words, the bot's whole reply, the part played before a barge-in) of turn n."""
        return (
            f"вопрос номер {n}",
            f"Ответ на вопрос {n}. Второе предложение ответа.",
            f"Ответ на вопрос {n}.",
        )

    def events(self) -> Iterator[tuple[str, Message]]:
        """Subject and message of each event; a message is made when asked for (its ts_ms is then)."""
        cid, started = self.call_id, now_ms()
        yield subjects.lifecycle(cid), CallStarted(call_id=cid, robot=ROBOT, channel="web", sample_rate=16000)
        for n in range(1, self.turns + 1):
            turn, (said, reply, played) = self.turn_id(n), self.texts(n)
            cut = self.interrupted(n)
            end = now_ms()
            yield (
                subjects.asr(cid),
                AsrFinal(
                    call_id=cid,
                    turn_id=turn,
                    text=said,
                    audio_ms=1200,
                    speech_end_ts_ms=end,
                    provider="bench",
                ),
            )
            yield subjects.llm_done(cid), LlmDone(
                call_id=cid, turn_id=turn, text=reply, sentences=2, provider="bench", prompt_tokens=120,
                completion_tokens=24,
            )  # fmt: skip
            if cut:
                yield (
                    subjects.control(cid),
                    ControlInterrupt(
                        call_id=cid,
                        turn_id=turn,
                        by_turn_id=self.turn_id(n + 1),
                        played_ms=900,
                        played_text=played,
                    ),
                )
            yield subjects.turn_report(cid), TurnMetrics(
                call_id=cid, turn_id=turn, user_text=said, bot_text=reply, speech_end_ts_ms=end,
                asr_final_ts_ms=end + 300, first_sentence_ts_ms=end + 500, first_audio_ts_ms=end + 600,
                first_played_ts_ms=end + 650, interrupted=cut, played_text=played if cut else "",
            )  # fmt: skip
        ended = CallEnded(call_id=cid, reason="hangup", duration_ms=now_ms() - started, turns=self.turns)
        yield subjects.lifecycle(cid), ended


@dataclass(frozen=True, slots=True)
class Published:
    call_id: str
    type: str
    turn_id: str
    at: float  # time.perf_counter() just before the publish
    publish_s: float  # how long the publish call took (the gateway's cost)


def interleave(
    calls: Iterable[SimulatedCall], under_way: int, rng: random.Random
) -> Iterator[tuple[str, Message]]:
    """The calls' events in the order a stream would hold them: ``under_way`` calls at a time, each
    next event from one of them drawn at random, a call that ends replaced by the next."""
    pending = iter(calls)
    active = [call.events() for call in itertools.islice(pending, under_way)]
    while active:
        events = rng.choice(active)
        item = next(events, None)
        if item is not None:
            yield item
            continue
        active.remove(events)
        following = next(pending, None)
        if following is not None:
            active.append(following.events())


class CallTraffic:
    """``concurrent`` simulated calls at ``rate`` events/s in all, from one NATS connection.

    A call that ends is replaced by a new one until ``total_calls`` have started or ``stop_new_calls``
    is called; the calls under way then run to their end. Calls take turns publishing one event each,
    in order; with ``spread`` the next call is drawn at random and each call has from half to one and
    a half times ``turns`` turns (seeded), so the calls are not in step and do not end together.
    """

    def __init__(
        self,
        bus: NatsBus,
        prefix: str,
        concurrent: int,
        turns: int,
        rate: float,
        total_calls: int | None = None,
        spread: bool = False,
    ) -> None:
        self.bus = bus
        self.prefix = prefix
        self.concurrent = concurrent
        self.turns = turns
        self.rate = rate
        self.total_calls = total_calls
        self.calls: dict[str, SimulatedCall] = {}
        self.published: list[Published] = []
        self._no_new_calls = False
        self._rng = random.Random(7) if spread else None

    def stop_new_calls(self) -> None:
        self._no_new_calls = True

    def _next_call(self) -> Iterator[tuple[str, Message]] | None:
        if self._no_new_calls or (self.total_calls is not None and len(self.calls) >= self.total_calls):
            return None
        turns = self.turns
        if self._rng is not None:
            turns = self._rng.randint(max(1, turns // 2), turns + turns // 2)
        call = SimulatedCall(f"{self.prefix}-{len(self.calls)}", turns)
        self.calls[call.call_id] = call
        return call.events()

    async def run(self) -> None:
        active = [events for events in (self._next_call() for _ in range(self.concurrent)) if events]
        started, slot = time.perf_counter(), 0
        while active:
            slot %= len(active)
            item = next(active[slot], None)
            if item is None:  # that call ended: another takes its place
                replacement = self._next_call()
                if replacement is None:
                    active.pop(slot)
                else:
                    active[slot] = replacement
                continue
            subject, msg = item
            delay = started + len(self.published) / self.rate - time.perf_counter()
            if delay > 0.001 or len(self.published) % 200 == 0:
                await asyncio.sleep(max(0.0, delay))
            at = time.perf_counter()
            await self.bus.publish(subject, msg)
            done = time.perf_counter()
            self.published.append(
                Published(msg.call_id, msg.type_name, getattr(msg, "turn_id", ""), at, done - at)
            )
            slot = self._rng.randrange(len(active)) if self._rng is not None else slot + 1
        await self.bus.client.flush()


# ---- the recorder as a process (also used by the tests) --------------------------------------------


def recorder_env(
    nats_url: str, postgres_dsn: str, redis_url: str, schema: str, stream: str, **settings: object
) -> dict[str, str]:
    """Environment of one recorder: its schema and streams; ``settings`` become ``VP_<NAME>``."""
    env = {
        "NATS_URL": nats_url,
        "POSTGRES_DSN": postgres_dsn,
        "REDIS_URL": redis_url,
        "VP_POSTGRES_SCHEMA": schema,
        "VP_STREAM_NAME": stream,
        "VP_PARKED_STREAM_NAME": f"{stream}_PARKED",
        "VP_LOG_FORMAT": "json",
    }
    env.update({f"VP_{name.upper()}": str(value) for name, value in settings.items()})
    return env


class RecorderProcess:
    """``python -m vp_recorder`` with its own environment, log file and /health port."""

    def __init__(self, env: Mapping[str, str], workdir: Path, name: str = "recorder") -> None:
        self.http_port = free_port()
        inherited = {k: v for k, v in os.environ.items() if k not in ("MONGO_URI", "TG_TOKEN", "TG_CHAT_ID")}
        self.env = {**inherited, **env, "VP_HTTP_PORT": str(self.http_port), "PYTHONUNBUFFERED": "1"}
        self.workdir = workdir  # also its cwd: no stray .env is read
        self.log_path = workdir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "vp_recorder", env=self.env, cwd=self.workdir, stdout=log, stderr=log
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def health(self) -> dict[str, Any] | None:
        """The /health body (200 or 503), or None while nothing answers."""
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                reply = await client.get(f"http://127.0.0.1:{self.http_port}/health")
            body: dict[str, Any] = reply.json()
            return body
        except (httpx.HTTPError, ValueError):
            return None

    async def store_states(self) -> dict[str, str]:
        """Each store's state once the recorder runs (empty while it starts or does not answer)."""
        body = await self.health()
        if body is None or body.get("status") not in ("ok", "draining"):
            return {}
        return {name: str(store.get("state")) for name, store in body.get("stores", {}).items()}

    async def wait_stores(self, within_s: float = 30.0, **states: str) -> None:
        """Wait until the named stores are in those states (none named: every store up)."""
        deadline = time.monotonic() + within_s
        while True:
            found = await self.store_states()
            if not self.running:
                raise AssertionError(f"the recorder exited:\n{self.log_tail()}")
            wanted = states or {name: "up" for name, state in found.items() if state != "disabled"}
            if wanted and all(found.get(name) == state for name, state in wanted.items()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"stores {found}, wanted {wanted}:\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far (Linux /proc; 0.0 elsewhere)."""
        if self.proc is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def wait_exit(self, within_s: float) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), within_s)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited in 15 s. Idempotent."""
        if not self.running:
            return
        self.signal(signal.SIGTERM)
        try:
            await self.wait_exit(15.0)
        except TimeoutError:
            self.signal(signal.SIGKILL)
            await self.wait_exit(5.0)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


async def consumer_backlogs(js: nats.js.JetStreamContext, stream: str) -> dict[str, int]:
    """Each durable consumer's backlog: events not yet delivered plus delivered but not acked."""
    infos = await js.consumers_info(stream)
    return {
        str(info.name): int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        for info in infos
        if info.config.durable_name
    }


async def stream_size(js: nats.js.JetStreamContext, stream: str) -> int:
    return int((await js.stream_info(stream)).state.messages)


async def wait_caught_up(
    js: nats.js.JetStreamContext, stream: str, events: int, consumers: int, within_s: float
) -> float:
    """Wait until the stream holds ``events`` and ``consumers`` durables have none left; the time taken."""
    started = time.monotonic()
    while True:
        backlogs = await consumer_backlogs(js, stream)
        size = await stream_size(js, stream)
        if size >= events and len(backlogs) >= consumers and not any(backlogs.values()):
            return time.monotonic() - started
        if time.monotonic() - started > within_s:
            raise AssertionError(f"not caught up: stream {size}/{events}, backlogs {backlogs}")
        await asyncio.sleep(0.05)
