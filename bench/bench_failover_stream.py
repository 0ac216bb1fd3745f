"""Failover of the streaming owners (vad, asr): the gap after a kill -9 mid-utterance, turns lost,
and how late heartbeats arrive on this machine.

Two worker processes per role on a private NATS server, the gateway's call session in this process,
a caller whose frames name themselves (the test-only ``span`` ASR engine reports which speech
frames a transcript covers). Each run: a call, one 3 s utterance, the role's owner killed 1.5 s in;
the killed worker is restarted for the next run.

- gap: kill -> the call re-assigned with the caller audio replayed (the new owner has it all)
- lost: runs whose utterance did not come out as one turn with its whole text (must be 0)
- heartbeats: inter-arrival of every worker's heartbeats over the bench (interval 0.2 s); with
  ``--burn N``, N processes keep the CPU busy meanwhile (a loaded machine); ``--whisper-s S``: then
  S seconds of a whisper ASR and a Silero VAD worker at work on real speech, their heartbeats timed

    .venv/bin/python bench/bench_failover_stream.py [--runs 20] [--roles vad,asr] [--burn 2] [--whisper-s 30]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.failover.span_asr import span_text  # noqa: E402
from tests.failover.stack import (  # noqa: E402
    Beats,
    Gateway,
    Workers,
    caller_turns,
    speak,
    wait_until,
    watch_heartbeats,
    write_robot,
)
from voiceplatform import subjects  # noqa: E402
from voiceplatform.logging import configure_logging  # noqa: E402
from voiceplatform.runtime.ownership import HEARTBEAT_INTERVAL_S, OWNER_TIMEOUT_S  # noqa: E402
from voiceplatform_devstack.devinfra import EmbeddedNats  # noqa: E402

LEAD, SPEECH, TAIL = 25, 150, 60
FAULT_AT = LEAD + SPEECH // 2
INSTANCES = {"vad": ["vad-a", "vad-b"], "asr": ["asr-a", "asr-b"]}


def burn(stop_at: float) -> None:
    import numpy as np

    a = np.random.default_rng(0).random((300, 300))
    while time.time() < stop_at:
        a = a @ a
        a /= a.max()


def worst_gaps(beats: Beats) -> dict[str, int]:
    return {
        i: round(max((b - a for a, b in itertools.pairwise(ts)), default=0) * 1000)
        for i, ts in beats.times.items()
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def one_run(
    gateway: Gateway, workers: Workers, beats: Beats, robots: Path, role: str
) -> tuple[float, bool]:
    session = await gateway.call(robots)
    await wait_until(lambda: {"vad", "asr"} <= set(session.owners), 10, "owners")
    victim = session.owners[role]
    killed: list[float] = []
    moved: list[float] = []

    async def on_frame(i: int) -> None:
        if i == FAULT_AT:
            killed.append(time.monotonic())
            workers.kill(victim)
            beats.times.pop(victim, None)  # its restart's first beat is no late beat
        if killed and not moved and session.owners.get(role) not in (None, victim):
            moved.append(time.monotonic())

    first = await speak(session, [LEAD <= i < LEAD + SPEECH for i in range(LEAD + SPEECH + TAIL)], on_frame)
    await wait_until(lambda: session.owners.get(role) not in (None, victim), 10, "re-assignment")
    if not moved:
        moved.append(time.monotonic())
    try:
        await wait_until(lambda: any(t.user_text for t in caller_turns(session)), 15, "transcript")
        await asyncio.sleep(0.3)
    except AssertionError:
        pass
    turns = caller_turns(session)
    whole = len(turns) == 1 and turns[0].user_text == span_text(first + LEAD, SPEECH)
    await session.end("bench")
    beats.times.pop(victim, None)  # a beat it sent just before the kill may have come in since
    workers.start(role, victim)
    return moved[0] - killed[0], whole


async def heartbeats_under_whisper(nats_url: str, work: Path, seconds: float) -> None:
    """One whisper ASR and one Silero VAD worker on a call of real speech, decoding turn after turn:
    how late do their heartbeats arrive while the models run?"""
    from tests.audio_fixtures import festival_wav
    from voiceplatform.audio import array_to_pcm, frames, read_wav
    from voiceplatform.wire import AssignRequest, AudioChunk, VadSpeechEnded, VadSpeechStarted

    robots = work / "robots"
    write_robot(robots, "whisper_bot", "silero")
    config = (robots / "whisper_bot" / "config.json").read_text().replace('"span"', '"whisper"')
    (robots / "whisper_bot" / "config.json").write_text(config)
    samples, rate = read_wav(
        festival_wav("Здравствуйте, у меня есть собака, и она любит гулять", work / "w.wav")
    )
    pcm = [array_to_pcm(f) for f in frames(samples, rate // 50)]
    workers = Workers(nats_url, robots, work)
    workers.start("asr-whisper", "wasr-1")
    workers.start("vad", "wvad-1", VP_PRELOAD_SILERO="true")
    gateway = await Gateway.connect(nats_url)
    try:
        beats = await watch_heartbeats(gateway.bus)
        await wait_until(lambda: beats.alive(["wasr-1", "wvad-1"]), 180, "whisper worker")
        call_id = "whisper-load"
        beats.times.clear()  # from the assignment on (building a whisper session is part of the load)
        for role, instance in (("asr", "wasr-1"), ("vad", "wvad-1")):
            req = AssignRequest(call_id=call_id, role=role, robot="whisper_bot", sample_rate=rate, epoch=1)
            await gateway.bus.request(subjects.assign_to(role, instance), req, timeout=30)
        seq, turn, loop = 0, 0, asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            turn += 1
            start_ms = seq * 20
            t0 = loop.time()
            for i, frame in enumerate(pcm):
                await gateway.bus.publish(
                    subjects.audio_in(call_id),
                    AudioChunk(call_id=call_id, seq=seq, sample_rate=rate, pcm=frame),
                )
                seq += 1
                if i == 5:
                    await gateway.bus.publish(
                        subjects.vad(call_id),
                        VadSpeechStarted(
                            call_id=call_id, turn_id=f"w{turn}", audio_offset_ms=start_ms, epoch=1
                        ),
                    )
                await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - loop.time()))
            await gateway.bus.publish(
                subjects.vad(call_id),
                VadSpeechEnded(
                    call_id=call_id,
                    turn_id=f"w{turn}",
                    audio_offset_ms=seq * 20,
                    speech_ms=len(pcm) * 20,
                    epoch=1,
                ),
            )
        gaps = [g * 1000 for g in beats.gaps()]
        worst = {
            i: round(max(b - a for a, b in itertools.pairwise(ts)) * 1000) for i, ts in beats.times.items()
        }
        print(
            f"heartbeats while whisper decodes {turn} turns and Silero scores every frame ({seconds:.0f} s): "
            f"p50 {statistics.median(gaps):.0f} ms, p99 {pct(gaps, 0.99):.0f} ms, max {max(gaps):.0f} ms; "
            f"worst per worker {worst}"
        )
    finally:
        workers.stop_all()
        await gateway.close()


async def main(args: argparse.Namespace) -> None:
    configure_logging("bench-failover", "ERROR", json=False)
    work = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    nats = EmbeddedNats.start(work / "nats")
    write_robot(work / "robots")
    workers = Workers(nats.url, work / "robots", work)
    burners: list[multiprocessing.Process] = []
    gateway = await Gateway.connect(nats.url)
    try:
        for role, ids in INSTANCES.items():
            for instance in ids:
                workers.start(role, instance)
        beats = await watch_heartbeats(gateway.bus)
        every = [i for ids in INSTANCES.values() for i in ids]
        await wait_until(lambda: beats.alive(every), 60, "workers")
        stop_at = time.time() + 3600
        burners = [
            multiprocessing.Process(target=burn, args=(stop_at,), daemon=True) for _ in range(args.burn)
        ]
        for p in burners:
            p.start()
        beats.times.clear()
        print(
            f"heartbeat {HEARTBEAT_INTERVAL_S * 1000:.0f} ms, owner timeout {OWNER_TIMEOUT_S * 1000:.0f} ms, "
            f"{args.runs} kill -9 per role, {args.burn} CPU burners"
        )
        for role in args.roles.split(","):
            gaps: list[float] = []
            lost = 0
            for _ in range(args.runs):
                gap, whole = await one_run(gateway, workers, beats, work / "robots", role)
                gaps.append(gap * 1000)
                lost += not whole
                await wait_until(lambda: beats.alive(every), 60, "restarted worker")
                await asyncio.sleep(0.3)
            print(
                f"{role}: failover gap p50 {statistics.median(gaps):.0f} ms, p95 {pct(gaps, 0.95):.0f} ms, "
                f"max {max(gaps):.0f} ms; turns lost {lost}/{args.runs}"
            )
        beats.times = {i: ts for i, ts in beats.times.items() if i in every}  # the fault runs' workers
        late = [g * 1000 for g in beats.gaps()]
        if late:
            print(
                f"heartbeat inter-arrival: p50 {statistics.median(late):.0f} ms, "
                f"p99 {pct(late, 0.99):.0f} ms, max {max(late):.0f} ms over {len(late)} beats; "
                f"worst per worker {worst_gaps(beats)}"
            )
        if args.whisper_s > 0:  # after the figures above: it blocks this loop on Festival a moment
            await heartbeats_under_whisper(nats.url, work, args.whisper_s)
    finally:
        for p in burners:
            p.terminate()
        workers.stop_all()
        await gateway.close()
        nats.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--roles", default="vad,asr")
    parser.add_argument("--burn", type=int, default=0, help="CPU-burning processes during the bench")
    parser.add_argument(
        "--whisper-s", type=float, default=0, help="then heartbeats of a whisper ASR and a Silero VAD at work"
    )
    asyncio.run(main(parser.parse_args()))
