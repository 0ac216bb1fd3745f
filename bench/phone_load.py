"""The caller side of the phone benchmark: calls placed through the FreeSWITCH peer, and what is measured.

Each call is a real-time caller on the peer's media clock (8 kHz, one 20 ms frame per tick, silence
between utterances as a phone sends it): it waits for the greeting to finish, then says a 1 s loud
tone (speech to the energy VAD) and listens until the reply has played, again and again until its
``seconds`` are up, then hangs up.

Measured per call:
- peer frame lag: how late each caller frame left the peer against its 20 ms schedule (answer time
  + k x 20 ms), i.e. whether the load generator itself kept real time. The peer has no hook for
  this, so ``FrameMeter`` listens to the call's clock (``PeerCall.on_frame``);
- gateway frame lag (a sample of calls): the gateway stamps each ``audio.chunk`` it publishes for the
  VAD (``ts_ms``, wall clock, 1 ms resolution); its lateness against the same schedule is what the
  pipeline sees, and the stamp minus the frame's send time at the peer is the hop (WebSocket +
  the gateway's loop). The first ``SETUP_FRAMES`` of a call (the stream waits while the call
  starts) are left out;
- answer → greeting: ``CHANNEL_ANSWER`` → the peer's first ``PLAYBACK_START``;
- speech end → reply: last speech frame sent → the first ``PLAYBACK_START`` after it (includes the
  VAD hang-over), and the gateway's own ``turn.metrics`` voice_to_voice_ms (VAD speech end → first
  robot frame), forwarded to the peer as text frames;
- lost turns: utterances with no reply played within the hang-over + ``REPLY_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.platform_report import percentile
from voiceplatform import subjects
from voiceplatform.bus import Envelope
from voiceplatform.bus.nats import NatsBus
from voiceplatform.phone_stream import stream_url
from voiceplatform.wire import AudioChunk, Message
from voiceplatform_devstack import FreeSwitchPeer, PeerCall, Playback

RATE = 8000
FRAME_S = 0.02
NUMBER = "7000"  # the bench robot's phone number: routed by number, as the dialplan's dnis
SPEECH_S = 1.0
GAP_S = 0.3  # after the reply has played, before the next utterance (a turn every ~2.5 s)
GREETING_TIMEOUT_S = 5.0
REPLY_TIMEOUT_S = 4.0  # beyond the VAD hang-over
QUIET_TIMEOUT_S = 5.0
POLL_S = 0.05
SETUP_FRAMES = 25
# gateway-fs publishes caller frames up to VP_FS_AUDIO_BATCH_MS (5 ms) after it took them
PUBLISH_GRACE_S = 0.1
MAX_SPREAD_S = 5.0  # call starts are spread over up to this long
MACHINE = "machine"  # cpu_pct key: every core's busy time, whatever process used it
PEER = "peer"  # cpu_pct key: the load generator (with --layout procs, alone in its process)


def caller_speech(seed: int) -> bytes:
    """1 s of a loud 220 Hz tone with some noise at 8 kHz: speech to the energy VAD."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(RATE * SPEECH_S)) / RATE
    speech = np.sin(2 * np.pi * 220 * t) * 4000 + rng.normal(0, 300, t.size)
    return speech.astype("<i2").tobytes()


@dataclass
class LevelStats:
    calls: int
    seconds: float
    answered: int = 0  # the stream was taken and the greeting played
    turns_planned: int = 0
    greeting_ms: list[float] = field(default_factory=list)
    reply_ms: list[float] = field(default_factory=list)
    v2v_ms: list[float] = field(default_factory=list)
    peer_lag_ms: list[float] = field(default_factory=list)
    gw_lag_ms: list[float] = field(default_factory=list)
    gw_hop_ms: list[float] = field(default_factory=list)  # peer sent → gateway published
    gw_missing: int = 0  # sampled frames the gateway never published
    # silence between two robot files the second of which was already queued (a hole the caller
    # hears inside a reply: ~100 ms per file with uuid_broadcast, 1-2 ms with sendmsg + playback)
    gap_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    cpu_pct: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    recorded: int | None = None  # calls the recorder stored as ended (None: no recorder)
    record_lag_s: float | None = None  # last hangup → every call stored as ended

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    @property
    def turns(self) -> int:
        return len(self.reply_ms)

    @property
    def lost(self) -> int:
        return self.turns_planned - self.turns

    def sustained(self, lag_limit_ms: float = 20.0) -> bool:
        """Every call answered, no lost turns or errors, frame lag p99 under the limit at both ends."""
        lags = [percentile(self.peer_lag_ms, 99)]
        if self.gw_lag_ms:
            lags.append(percentile(self.gw_lag_ms, 99))
        return (
            self.answered == self.calls
            and self.lost == 0
            and not self.errors
            and self.gw_missing == 0
            and (self.recorded is None or self.recorded == self.calls)
            and all(not math.isnan(lag) and lag < lag_limit_ms for lag in lags)
        )


class FrameMeter:
    """Lateness of each caller frame the peer's media clock sends, against answer + k x 20 ms.

    Wraps the channel's clock tick (the peer exposes no such hook); install before ``answer()``.
    Frames ticked while the stream is not connected yet go nowhere and are not counted.
    """

    def __init__(self, call: PeerCall, keep_schedule: bool) -> None:
        self.lag_ms: list[float] = []
        self.due_wall_ms: list[float] = []  # by stream frame index: when each frame was due (wall)
        self.sent_wall_ms: list[float] = []  # by stream frame index: when it was sent (wall)
        wall_offset = time.time() - time.monotonic()

        def on_frame(due: float, sent: float) -> None:
            self.lag_ms.append(max(0.0, (sent - due) * 1000))
            if keep_schedule:
                self.due_wall_ms.append((due + wall_offset) * 1000)
                self.sent_wall_ms.append((sent + wall_offset) * 1000)

        call.on_frame = on_frame


def first_play_after(call: PeerCall, after: float) -> Playback | None:
    return next((p for p in call.plays if p.started_at is not None and p.started_at >= after), None)


async def wait_play(call: PeerCall, after: float, timeout: float) -> Playback | None:
    """The first playback that started at or after ``after``, waiting up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        play = first_play_after(call, after)
        if play is not None or call.ended.is_set() or time.monotonic() > deadline:
            return play
        await asyncio.sleep(POLL_S)


async def wait_quiet(call: PeerCall, timeout: float = QUIET_TIMEOUT_S) -> bool:
    """Everything queued on the channel has played (or was dropped)."""
    deadline = time.monotonic() + timeout
    while any(p.stopped_at is None and p.status == "queued" for p in call.plays):
        if call.ended.is_set() or time.monotonic() > deadline:
            return False
        await asyncio.sleep(POLL_S)
    return True


@dataclass
class CallPlan:
    ws_base: str
    uuid: str
    seconds: float
    hangover_s: float
    speech: bytes
    caller: str = "79990001122"
    secret: str = ""  # VP_FS_STREAM_SECRET of the gateway under test
    gap_s: float = GAP_S  # silence after each reply, before the caller speaks again


async def run_call(
    peer: FreeSwitchPeer, plan: CallPlan, stats: LevelStats | None, bus: NatsBus | None = None
) -> None:
    """One call from answer to hangup; ``stats`` None: a warm-up whose problems raise instead."""
    metadata = json.dumps({"dnis": NUMBER, "caller": plan.caller, "rate": RATE})
    call = await peer.place_call(
        stream_url(plan.ws_base, plan.uuid, plan.secret),
        destination=NUMBER,
        caller=plan.caller,
        metadata=metadata,
        uuid=plan.uuid,
        answer=False,
    )
    meter = FrameMeter(call, keep_schedule=bus is not None)
    chunks: list[tuple[int, int]] = []
    sub = None
    if bus is not None:

        async def on_chunk(env: Envelope) -> Message | None:
            if isinstance(env.message, AudioChunk):  # v2: several frames, stamped when the last came
                chunks.extend((seq, env.message.ts_ms) for seq, _ in env.message.frames())
            return None

        sub = await bus.subscribe(subjects.audio_in(f"phone-{plan.uuid}"), on_chunk)
    errors: list[str] = []
    answered_at = time.monotonic()
    end_at = answered_at + plan.seconds
    try:
        await call.answer()
        greeting = await wait_play(call, answered_at, GREETING_TIMEOUT_S)
        if greeting is None or greeting.started_at is None:
            errors.append("no_greeting")
            return
        if stats is not None:
            stats.answered += 1
            stats.greeting_ms.append((greeting.started_at - answered_at) * 1000)
        await wait_quiet(call)
        turn_s = SPEECH_S + plan.hangover_s + 1.0
        while time.monotonic() + turn_s < end_at and not call.ended.is_set():
            if stats is not None:
                stats.turns_planned += 1
            await call.stream_pcm(plan.speech)
            speech_end = time.monotonic()
            reply = await wait_play(call, speech_end, plan.hangover_s + REPLY_TIMEOUT_S)
            if reply is None or reply.started_at is None:
                errors.append("no_reply")
            else:
                if stats is not None:
                    stats.reply_ms.append((reply.started_at - speech_end) * 1000)
                await wait_quiet(call)
            await asyncio.sleep(plan.gap_s)
        if stats is not None:  # stay on the line until the step's end: the concurrency holds
            await asyncio.sleep(max(0.0, end_at - time.monotonic()))
    finally:
        if call.ended.is_set():
            errors.append("ended_by_platform")
        await call.hangup()
        if sub is not None:
            await asyncio.sleep(PUBLISH_GRACE_S)  # the last frames the gateway took are still due
            await sub.unsubscribe()
        errors += _collect(call, meter, chunks, stats)
        if stats is None:
            if errors:
                raise RuntimeError(f"warm-up call failed: {errors}; peer saw {call.events_text[-5:]}")
        else:
            for kind in errors:
                stats.error(kind)


def _collect(
    call: PeerCall, meter: FrameMeter, chunks: list[tuple[int, int]], stats: LevelStats | None
) -> list[str]:
    errors = []
    v2v = []
    for event in call.events_text:
        if event.get("type") != "turn.metrics":
            continue
        if event.get("interrupted"):
            errors.append("interrupted")
        elif event.get("voice_to_voice_ms") is not None:
            v2v.append(float(event["voice_to_voice_ms"]))
    if stats is None:
        return errors
    stats.v2v_ms += v2v
    stats.peer_lag_ms += meter.lag_ms
    for a, b in itertools.pairwise(call.plays):
        if a.stopped_at is not None and b.started_at is not None and b.queued_at < a.stopped_at:
            stats.gap_ms.append((b.started_at - a.stopped_at) * 1000)
    if meter.due_wall_ms:
        seen = {seq for seq, _ in chunks}
        sent = len(meter.due_wall_ms)
        stats.gw_missing += sum(1 for seq in range(sent) if seq not in seen)
        kept = [(seq, ts) for seq, ts in chunks if SETUP_FRAMES <= seq < sent]
        stats.gw_lag_ms += [ts - meter.due_wall_ms[seq] for seq, ts in kept]
        stats.gw_hop_ms += [ts - meter.sent_wall_ms[seq] for seq, ts in kept]
    return errors


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy so far (all processes, ours or not)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process so far (Linux /proc; nan when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wakeups(pid: int) -> float:
    """Times a running process's threads went to sleep and were woken so far (voluntary context
    switches; nan when it is gone). A count, so unlike CPU time it does not depend on what else runs:
    on a virtual machine each wake-up of another process (a socket write to NATS) is a large part of a
    message's cost."""
    total = 0
    try:
        for status in Path(f"/proc/{pid}/task").glob("*/status"):
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                for line in status.read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
    except OSError:
        return math.nan
    return float(total) if total else math.nan


async def run_level(
    peer: FreeSwitchPeer,
    make_plan: Callable[[int], CallPlan],
    calls: int,
    seconds: float,
    pids: dict[str, int],
    bus: NatsBus | None,
    gw_sample: int,
) -> LevelStats:
    """``calls`` concurrent calls, their starts spread over up to ``MAX_SPREAD_S``.

    Each start also gets its own phase within the 20 ms frame (golden-ratio steps), as channels
    answered at independent moments have: calls in lock-step would all tick at the same instant.
    CPU is measured while all the calls are up (from the last start to the first end) when that
    window is long enough, else over the whole step.
    """
    stats = LevelStats(calls, seconds)
    spread = min(MAX_SPREAD_S, 0.05 * calls)

    async def one(i: int) -> None:
        await asyncio.sleep(spread * i / calls + FRAME_S * ((i * 0.6180339887) % 1.0))
        await run_call(peer, make_plan(i), stats, bus if i < gw_sample else None)

    started = time.monotonic()
    window = (spread + 1.0, seconds - 0.5)  # seconds after the start: every call is up
    steady = window[1] - window[0] >= 2.0
    task = asyncio.gather(*(one(i) for i in range(calls)))
    if steady:
        await asyncio.sleep(window[0])

    def sample() -> dict[str, float]:
        return {**{name: cpu_seconds(pid) for name, pid in pids.items()}, MACHINE: machine_busy_seconds()}

    before, cpu_from = sample(), time.monotonic()
    if steady:
        await asyncio.sleep(max(0.0, started + window[1] - time.monotonic()))
        after, cpu_to = sample(), time.monotonic()
    await task
    stats.wall_s = time.monotonic() - started
    if not steady:
        after, cpu_to = sample(), time.monotonic()
    for name in before:
        stats.cpu_pct[name] = (after[name] - before[name]) / (cpu_to - cpu_from) * 100
    return stats


# ---- report ------------------------------------------------------------------------------------------


def trio(values: list[float], qs: tuple[int, ...] = (50, 95, 99)) -> str:
    return "/".join(f"{percentile(values, q):.0f}" for q in qs)


def format_table(results: list[LevelStats]) -> str:
    head = (
        f"{'calls':>5} {'greeted':>7} {'turns':>9} | {'peer lag p50/95/99 max':>22} | "
        f"{'gw lag p50/95/99':>16} | {'hop p50/99':>10} | {'greeting p50/p99':>16} | "
        f"{'reply p50/95/99':>16} | {'v2v p50/p99':>11} | {'gap p50/max':>11} | {'recorded':>8} | ok | errors"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        peer = f"{trio(r.peer_lag_ms)} {max(r.peer_lag_ms, default=float('nan')):.0f}"
        recorded = "-" if r.recorded is None else f"{r.recorded}/{r.calls}"
        errors = dict(r.errors)
        if r.gw_missing:
            errors["gw_missing_frames"] = r.gw_missing
        lines.append(
            f"{r.calls:>5} {r.answered:>7} {f'{r.turns}/{r.turns_planned}':>9} | {peer:>22} | "
            f"{trio(r.gw_lag_ms):>16} | {trio(r.gw_hop_ms, (50, 99)):>10} | "
            f"{trio(r.greeting_ms, (50, 99)):>16} | {trio(r.reply_ms):>16} | "
            f"{trio(r.v2v_ms, (50, 99)):>11} | {trio(r.gap_ms, (50, 100)):>11} | {recorded:>8} | "
            f"{'yes' if r.sustained() else 'NO':>2} | "
            f"{errors or '-'}"
        )
    return "\n".join(lines)


def phone_path_pct(stats: LevelStats) -> float | None:
    """The platform's share of the machine: every core's busy time less the load generator's
    (Postgres and Redis included, as they work for the recorder); None when the load generator
    shares its process with the services (``inproc``)."""
    if MACHINE not in stats.cpu_pct or PEER not in stats.cpu_pct:
        return None
    return stats.cpu_pct[MACHINE] - stats.cpu_pct[PEER]


def calls_per_core(stats: LevelStats) -> float | None:
    pct = phone_path_pct(stats)  # at or below zero (the two samples disagree): no figure
    return stats.calls / (pct / 100) if pct is not None and pct > 0 else None


def format_cpu(results: list[LevelStats]) -> str:
    """Per process, their total, the machine's busy time (other work on it included), and the calls
    per core of the phone path (the machine less the load generator)."""
    names = [n for n in results[0].cpu_pct if n != MACHINE] if results else []
    head = (
        f"{'calls':>5} | "
        + " | ".join(f"{n:>13}" for n in names)
        + f" | {'total':>6} | {MACHINE:>7} | {'phone path':>10} | {'calls/core':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        cells = " | ".join(f"{r.cpu_pct.get(n, float('nan')):>13.0f}" for n in names)
        total = sum(r.cpu_pct.get(n, 0.0) for n in names)
        path, per_core = phone_path_pct(r), calls_per_core(r)
        path_cell = "-" if path is None else f"{path:.0f}"
        per_core_cell = "-" if per_core is None else f"{per_core:.0f}"
        lines.append(
            f"{r.calls:>5} | {cells} | {total:>6.0f} | {r.cpu_pct.get(MACHINE, float('nan')):>7.0f} | "
            f"{path_cell:>10} | {per_core_cell:>10}"
        )
    return "\n".join(lines)


def verdict(results: list[LevelStats]) -> str:
    held = [r for r in results if r.sustained()]
    if not held:
        return "no step sustained (frame lag p99 < 20 ms at peer and gateway, no lost turn or error)"
    best = max(held, key=lambda r: r.calls)
    per_core = calls_per_core(best)
    return (
        f"largest step sustained: {best.calls} concurrent calls "
        "(frame lag p99 < 20 ms at peer and gateway, every call greeted and recorded, no lost turn)"
        + ("" if per_core is None else f"; {per_core:.0f} calls per core on the phone path")
    )
