"""Concurrent phone calls this machine sustains: FreeSWITCH peer → gateway-fs → pipeline → recorder.

Set-up (everything private to the run): an embedded NATS; the pipeline services on the instant
engines of ``bench/instant_engines.py`` (energy VAD, ASR-instant, prompt-router, script LLM,
TTS-instant), one process each (``--layout procs``, the default) or all in this process
(``--layout inproc``); the recorder as its own process (``python -m vp_recorder``) on PostgreSQL and
Redis (``POSTGRES_DSN``/``REDIS_URL``, else the loopback ones), with its own schema and stream;
gateway-fs as its own process (``python -m vp_gateway_fs``), logged in to the FreeSWITCH peer's Event
Socket. The peer (``voiceplatform_devstack.FreeSwitchPeer``) runs in this process as the load
generator: for each step of ``--calls`` it places that many concurrent calls (starts spread over up
to 5 s), each routed by its dialed number, greeted (a synthesized greeting, cached by the gateway
after the warm-up call) and talking in real time for ``--seconds`` (see ``bench/phone_load.py``).

Per step it reports the caller frames' lag at the peer (send time vs the 20 ms schedule) and at the
gateway (its ``audio.chunk`` stamp vs the same schedule, on ``--gw-sample`` calls), answer → first
greeting PLAYBACK_START, speech end → first reply PLAYBACK_START (includes the VAD hang-over), the
gateway's voice_to_voice_ms, calls the recorder stored as ended, the CPU of every process and of
the whole machine (while all the step's calls are up), and whether the step was sustained: every
call answered and greeted, no lost turn or error, every call recorded, frame lag p99 under 20 ms at
both ends. The last two CPU columns are the phone path's share of a core (the machine's busy time
less the load generator's: every service, nats-server, PostgreSQL and Redis) and calls per core
(the step's calls over that share; ``--layout procs`` only, where the peer has a process of its own).

The load generator shares the two cores with what it measures, so it is kept light: the peer keeps
a short event history and start-up objects are frozen out of the garbage collector (a full
collection over the peer's default 20,000 retained events stalls every media clock for 40-60 ms).
Above ~40 calls on 2 cores the peer's own frames go late because the machine is saturated (see the
``machine`` column); the hop to the gateway stays short longer.

    .venv/bin/python bench/bench_phone.py [--calls 10,25,40,50,75,100] [--seconds 20] [--layout procs]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import httpx
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bench.phone_load import (
    GAP_S,
    NUMBER,
    PEER,
    CallPlan,
    LevelStats,
    caller_speech,
    format_cpu,
    format_table,
    run_call,
    run_level,
    verdict,
)
from bench.platform_stack import REPO, ROBOT, ROLES, InProcessStack, ProcessStack, make_robot, tts_mode
from bench.recorder_load import RecorderProcess, recorder_env
from voiceplatform.bus.nats import NatsBus
from voiceplatform_devstack import FreeSwitchPeer
from voiceplatform_devstack.devinfra import EmbeddedNats, free_port

PASSWORD = "bench-phone-esl-secret"
STREAM_SECRET = "bench-phone-stream-secret"
GREETING = "Здравствуйте! Чем могу помочь?"
READY_TIMEOUT_S = 90.0
RECORD_TIMEOUT_S = 30.0
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/15"


def make_phone_robot(root: Path, silence_frames: int) -> Path:
    """The platform bench's robot, with a phone number and a greeting synthesized through TTS."""
    robots = make_robot(root, silence_frames)
    path = robots / ROBOT / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(greeting_text=GREETING, phone_numbers=[NUMBER])
    path.write_text(json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8")
    return robots


class GatewayProcess:
    """``python -m vp_gateway_fs``, logged in to the peer's ESL; its output in a log file."""

    def __init__(self, workdir: Path, nats_url: str, robots: Path, esl_port: int) -> None:
        self.http_port = free_port()
        self.stream_port = free_port()  # mod_audio_stream's WebSocket
        self.log_path = workdir / "gateway-fs.log"
        self.workdir = workdir  # also its cwd: no stray .env is read
        self.env = {
            **os.environ,
            "NATS_URL": nats_url,
            "ROBOTS_DIR": str(robots),
            "VP_FS_ESL_PASSWORD": PASSWORD,
            "VP_FS_STREAM_SECRET": STREAM_SECRET,
            "VP_FS_ESL_PORT": str(esl_port),
            "VP_HTTP_PORT": str(self.http_port),
            "VP_FS_STREAM_PORT": str(self.stream_port),
            "VP_FS_GREETING_CACHE_DIR": str(workdir / "greetings"),
            "VP_FS_RECORDINGS_DIR": str(workdir / "recordings"),
            "VP_DRAIN_TIMEOUT_S": "2",
            "VP_MAX_CALLS": "1000",
            "VP_LOG_FORMAT": "json",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        }
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.platform_stack", "--serve", "gateway-fs",
                env=self.env, cwd=self.workdir,
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    async def wait_ready(
        self, presence: bool, timeout: float = READY_TIMEOUT_S, without: tuple[str, ...] = ()
    ) -> None:
        """The ESL is logged in and, with ``presence``, every pipeline role announced (/health 200)
        but the roles ``without`` (a run without the recorder).

        In-process services announce no presence (``run_service`` does that): calls are assigned all
        the same, so only the ESL is waited for then.
        """
        deadline = time.monotonic() + timeout
        body = ""
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.returncode is not None:
                    raise RuntimeError(f"gateway-fs exited:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    reply = await client.get(f"http://127.0.0.1:{self.http_port}/health")
                    body = reply.text
                    health = reply.json()
                    missing = set(health.get("missing_services") or ()) if presence else set()
                    if reply.status_code == 200 or (health.get("esl_connected") and missing <= set(without)):
                        return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"gateway-fs not ready within {timeout:.0f} s: {body[:300]}\n{self.log_tail()}")

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@dataclass
class Recorder:
    """The recorder process on its own schema and stream, and how many calls it stored as ended."""

    postgres_dsn: str
    redis_url: str
    workdir: Path
    tag: str
    process: RecorderProcess | None = None
    pg: asyncpg.Connection | None = None

    @property
    def schema(self) -> str:
        return f"bench_phone_{self.tag}"

    async def start(self, nats_url: str) -> None:
        stream = f"BENCH_PHONE_{self.tag.upper()}"
        env = recorder_env(
            nats_url, self.postgres_dsn, self.redis_url, self.schema, stream,
            call_logs_dir=self.workdir / "call_logs",
        )  # fmt: skip
        self.process = RecorderProcess(env, self.workdir)
        await self.process.start()
        await self.process.wait_stores(READY_TIMEOUT_S)
        self.pg = await asyncpg.connect(self.postgres_dsn, server_settings={"search_path": self.schema})

    async def wait_recorded(self, prefix: str, calls: int, timeout: float = RECORD_TIMEOUT_S) -> int:
        """Calls of ``prefix`` stored as ended, once all are or ``timeout`` has passed."""
        assert self.pg is not None
        deadline = time.monotonic() + timeout
        while True:
            ended = int(
                await self.pg.fetchval(
                    "SELECT count(*) FROM calls WHERE call_id LIKE $1 AND status = 'ended'", f"{prefix}%"
                )
            )
            if ended >= calls or time.monotonic() > deadline:
                return ended
            await asyncio.sleep(0.2)

    def pid(self) -> int | None:
        proc = self.process.proc if self.process is not None else None
        return proc.pid if proc is not None and proc.returncode is None else None

    async def close(self) -> None:
        if self.process is not None:
            await self.process.stop()
        if self.pg is not None:
            await self.pg.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
            await self.pg.close()
        redis = aioredis.from_url(self.redis_url)
        try:  # live call state of our calls (it would expire in 30 minutes anyway)
            async for key in redis.scan_iter(match=f"call:phone-bench-{self.tag}-*"):
                await redis.delete(key)
        except (OSError, RedisError):
            pass
        finally:
            await redis.aclose()


@dataclass
class PhoneStack:
    root: Path
    layout: str
    silence_frames: int
    recorder: Recorder | None
    tag: str = field(default_factory=lambda: uuidlib.uuid4().hex[:8])
    gap_s: float = GAP_S  # the callers' silence after each reply (--gap)
    nats: EmbeddedNats | None = None
    pipeline: InProcessStack | ProcessStack | None = None
    peer: FreeSwitchPeer | None = None
    gateway: GatewayProcess | None = None
    bus: NatsBus | None = None

    async def start(self) -> None:
        self.nats = await asyncio.to_thread(EmbeddedNats.start, self.root / "nats")
        robots = make_phone_robot(self.root / "robots", self.silence_frames)
        if self.layout == "procs":
            self.pipeline = ProcessStack(robots, self.nats.url, self.root / "logs")
        else:
            self.pipeline = InProcessStack(robots, self.nats.url)
        await self.pipeline.start()
        # the load generator keeps little history: 20,000 retained events (~50 header tuples each)
        # make every full garbage collection of this process stall its media clocks for 40-60 ms
        self.peer = FreeSwitchPeer(esl_password=PASSWORD, temp_dir=self.root / "fs", history=256)
        await self.peer.start()
        self.gateway = GatewayProcess(self.root / "gateway", self.nats.url, robots, self.peer.esl_port)
        await self.gateway.start()
        if self.recorder is not None:
            await self.recorder.start(self.nats.url)
        self.bus = await NatsBus.connect(self.nats.url, "bench-phone")
        without = () if self.recorder is not None else ("recorder",)
        await self.gateway.wait_ready(presence=self.layout == "procs", without=without)

    def plan(self, step: int, speech: bytes) -> CallPlan:
        assert self.gateway is not None
        return CallPlan(
            ws_base=f"ws://127.0.0.1:{self.gateway.stream_port}/call",
            uuid=f"bench-{self.tag}-{step}",
            seconds=0.0,
            hangover_s=self.silence_frames * 0.02,
            speech=speech,
            secret=STREAM_SECRET,
            gap_s=self.gap_s,
        )

    def pids(self) -> dict[str, int]:
        pids = {PEER if self.layout == "procs" else "peer+services": os.getpid()}
        if self.gateway is not None and self.gateway.proc is not None:
            pids["gateway-fs"] = self.gateway.proc.pid
        if isinstance(self.pipeline, ProcessStack):
            pids.update({role: p.pid for role, p in zip(ROLES, self.pipeline.procs, strict=True)})
        if self.recorder is not None and self.recorder.pid() is not None:
            pids["recorder"] = self.recorder.pid() or 0
        if self.nats is not None:
            pids["nats"] = self.nats.process.pid
        return pids

    async def stop(self) -> None:
        if self.gateway is not None:
            await self.gateway.stop()
        if self.peer is not None:
            await self.peer.stop()
        if self.bus is not None:
            await self.bus.close()
        if self.recorder is not None:
            await self.recorder.close()
        if self.pipeline is not None:
            await self.pipeline.stop()
        if self.nats is not None:
            await asyncio.to_thread(self.nats.stop)


async def run_benchmark(
    levels: list[int],
    seconds: float,
    layout: str = "procs",
    silence_frames: int = 25,
    recorder: tuple[str, str] | None = None,
    gw_sample: int = 4,
    workdir: Path | None = None,
    gap_s: float = GAP_S,
) -> list[LevelStats]:
    """Start everything, place one warm-up call (it caches the greeting), then run each step.

    ``recorder``: (PostgreSQL DSN, Redis URL) to run the recorder on, None to leave it out.
    """
    with tempfile.TemporaryDirectory(prefix="vp-bench-phone-") as tmp:
        root = workdir or Path(tmp)
        tag = uuidlib.uuid4().hex[:8]
        rec = Recorder(recorder[0], recorder[1], root / "recorder", tag) if recorder else None
        stack = PhoneStack(root, layout, silence_frames, rec, tag=tag, gap_s=gap_s)
        try:
            await stack.start()
            assert stack.peer is not None
            speech = caller_speech(0)
            warm = stack.plan(0, speech)
            warm.uuid, warm.seconds = f"{warm.uuid}-warmup", 5.0
            await run_call(stack.peer, warm, None)
            gc.collect()
            gc.freeze()  # what start-up built is never scanned again: full collections stay short
            results = []
            for step, calls in enumerate(levels, start=1):

                def make_plan(i: int, step: int = step) -> CallPlan:
                    plan = stack.plan(step, speech)
                    plan.uuid, plan.seconds = f"{plan.uuid}-{i:04d}", seconds
                    plan.caller = f"7999{step:02d}{i:05d}"
                    return plan

                stats = await run_level(
                    stack.peer, make_plan, calls, seconds, stack.pids(), stack.bus, gw_sample
                )
                stack.peer.all_calls[:] = [c for c in stack.peer.all_calls if not c.ended.is_set()]
                if rec is not None:
                    ended = time.monotonic()
                    stats.recorded = await rec.wait_recorded(f"phone-bench-{tag}-{step}-", calls)
                    stats.record_lag_s = time.monotonic() - ended
                results.append(stats)
            return results
        finally:
            gc.unfreeze()
            await stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", default="10,25,40,50,75,100", help="comma-separated concurrency steps")
    parser.add_argument("--seconds", type=float, default=20.0, help="each call's length per step")
    parser.add_argument("--layout", choices=["procs", "inproc"], default="procs")
    parser.add_argument("--silence-frames", type=int, default=25, help="VAD hang-over (robot default 25)")
    parser.add_argument("--gw-sample", type=int, default=4, help="calls whose gateway frame lag is measured")
    parser.add_argument("--no-recorder", action="store_true", help="leave the recorder out")
    parser.add_argument(
        "--gap", type=float, default=GAP_S, help="silence after a reply, s (0.3: a turn every ~2.5 s)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep logs here (default: temporary)")
    parser.add_argument("--log", type=Path, default=None, help="this process's logs (default: discarded)")
    parser.add_argument("--json", type=Path, default=None, help="also write raw results here")
    args = parser.parse_args()
    levels = [int(n) for n in args.calls.split(",") if n.strip()]
    stores = None
    if not args.no_recorder:
        stores = (
            os.environ.get("POSTGRES_DSN", DEFAULT_POSTGRES),
            os.environ.get("REDIS_URL", DEFAULT_REDIS),
        )

    from voiceplatform.logging import configure_logging

    configure_logging("bench", "INFO", json=True)
    log_file = (args.log or Path(os.devnull)).open("w")
    sys.stderr = log_file
    started = time.monotonic()
    load_before = os.getloadavg()[0]  # other work on the machine skews the tail
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        results = asyncio.run(
            run_benchmark(
                levels,
                args.seconds,
                args.layout,
                args.silence_frames,
                stores,
                args.gw_sample,
                args.workdir,
                args.gap,
            )
        )
    finally:
        sys.stderr = sys.__stderr__
        log_file.close()
    print(
        f"phone calls: FreeSWITCH peer (load generator) → gateway-fs → instant pipeline"
        f"{' + recorder' if stores else ''}, layout={args.layout}, tts={tts_mode()}, "
        f"{args.seconds:.0f} s per call, {args.gap:g} s after each reply, "
        f"VAD hang-over {args.silence_frames * 20} ms (included in 'reply'), "
        f"{os.cpu_count()} cores, load average before {load_before:.2f}"
    )
    print("lags and latencies in ms; gw lag on the first calls of each step only (--gw-sample)")
    print(format_table(results))
    print("\nCPU % of one core per process over each step:")
    print(format_cpu(results))
    print(f"\n{verdict(results)}")
    print(f"total {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results]))


if __name__ == "__main__":
    main()
