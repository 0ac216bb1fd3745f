"""`vp up`: infrastructure (the configured servers, or embedded ones) and every service, supervised."""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from voiceplatform.cli.devstack import required_for
from voiceplatform.cli.supervisor import StatusServer, Supervisor
from voiceplatform.config.api_tokens import TOKENS_FILE, ensure_tokens_file

SERVICES: tuple[tuple[str, str], ...] = (
    ("recorder", "vp_recorder"),
    ("prompt-router", "vp_router"),
    ("llm", "vp_llm"),
    ("tts", "vp_tts"),
    ("asr", "vp_asr"),
    ("vad", "vp_vad"),
    ("realtime", "vp_realtime"),
    ("gateway-web", "vp_gateway_web"),
    ("gateway-fs", "vp_gateway_fs"),
)
WEB_API_KEY_FILE = "web_api_key"  # the key an embedding site (or `vp call`) sends to POST /tokens
FIRST_WORKER_PORT = 8101
GATEWAY_FS_PORT = 8090  # where FreeSWITCH's mod_audio_stream (or `vp call --phone`) connects
GATEWAY_FS_HTTP_PORT = 8091  # gateway-fs's /health, /metrics and /outbound (`vp dial`)
ESL_PASSWORD_FILE = "fs_esl_password"
INFRA_URLS = ("NATS_URL", "POSTGRES_DSN", "REDIS_URL")  # unset ones: embedded servers (the dev stack)
ROBOTS_DIR_FILE = "robots_dir"  # the robots folder the services load, for `vp call` and `vp check`


@dataclass
class ServiceProcess:
    name: str
    module: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    log_file: Any = field(default=None, repr=False)

    def start(self) -> None:
        if self.log_file is not None:
            self.log_file.close()  # a restart: the previous run's handle
        self.log_file = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module], env=self.env, stdout=self.log_file, stderr=subprocess.STDOUT
        )

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Infra:
    """Servers for the platform: URLs from the environment, else embedded ones started here."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._servers: list[Any] = []
        self.env: dict[str, str] = {}
        self.service_env: dict[str, dict[str, str]] = {}  # per service name: its NATS credentials

    def start(self) -> None:
        from voiceplatform.credentials import LocalCredentials

        unset = [name for name in INFRA_URLS if not os.environ.get(name)]
        self.env.update({name: os.environ[name] for name in INFRA_URLS if name not in unset})
        if not unset:
            return
        with required_for(f"vp up without {', '.join(unset)} (embedded servers)"):
            from voiceplatform_devstack import devinfra

        # embedded servers get passwords generated at first start (<workdir>/credentials.json, 0600)
        creds = LocalCredentials.load_or_create(self.workdir)
        if "NATS_URL" in unset:
            nats = devinfra.EmbeddedNats.start(self.workdir / "nats", passwords=creds.nats)
            self._servers.append(nats)
            self.env["NATS_URL"] = nats.url
            self.service_env = {name: creds.nats_env(name) for name, _ in SERVICES}
        if "POSTGRES_DSN" in unset:
            pg = devinfra.EmbeddedPostgres.start(self.workdir / "postgres", password=creds.postgres)
            self._servers.append(pg)
            self.env["POSTGRES_DSN"] = pg.dsn
        if "REDIS_URL" in unset:
            redis = devinfra.EmbeddedRedis.start(self.workdir / "redis", password=creds.redis)
            self._servers.append(redis)
            self.env["REDIS_URL"] = redis.url

    def stop(self) -> None:
        for server in reversed(self._servers):
            with contextlib.suppress(Exception):
                server.stop()


def _scale(args: argparse.Namespace) -> dict[str, int]:
    counts = {name: 1 for name, _ in SERVICES}
    for item in args.scale:
        name, _, n = item.partition("=")
        if name not in counts or not n.isdigit():
            raise SystemExit(f"--scale expects SERVICE=N with SERVICE one of {sorted(counts)}")
        counts[name] = int(n)
    return counts


def start_services(
    env: dict[str, str],
    logs: Path,
    gateway_port: int,
    scale: dict[str, int] | None = None,
    first_port: int = FIRST_WORKER_PORT,
    extra_env: Mapping[str, Mapping[str, str]] | None = None,
) -> list[ServiceProcess]:
    """Start every service as its own process (``python -m vp_<name>``), logs to ``logs``;
    ``extra_env`` adds variables to one service (by name: its NATS user and password)."""
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[ServiceProcess] = []
    port = first_port
    for name, module in SERVICES:
        if name == "gateway-fs" and not env.get("VP_FS_ESL_PASSWORD"):
            continue  # it refuses to start without an Event Socket password
        for i in range((scale or {}).get(name, 1)):
            service_env = {**env, **(extra_env or {}).get(name, {})}
            if name == "gateway-web":
                service_env["VP_HTTP_PORT"] = str(gateway_port)
            elif name == "gateway-fs":
                service_env["VP_FS_STREAM_PORT"] = env.get("VP_GATEWAY_FS_PORT", str(GATEWAY_FS_PORT))
                service_env["VP_HTTP_PORT"] = env.get("VP_GATEWAY_FS_HTTP_PORT", str(GATEWAY_FS_HTTP_PORT))
            else:
                service_env["VP_HTTP_PORT"] = str(port)
                port += 1
            procs.append(ServiceProcess(f"{name}-{i + 1}", module, service_env, logs / f"{name}-{i + 1}.log"))
    for p in procs:
        p.start()
    return procs


def console_url(procs: list[ServiceProcess]) -> str | None:
    """The operator console of the first recorder (it serves the recorder API on the same port)."""
    for p in procs:
        if p.module == "vp_recorder":
            return f"http://127.0.0.1:{p.env['VP_HTTP_PORT']}/console/"
    return None


def stop_services(procs: list[ServiceProcess], timeout: float = 20.0) -> None:
    """SIGTERM (drain) every service, wait, kill what does not stop."""
    for p in reversed(procs):
        if p.proc is not None and p.proc.poll() is None:
            p.proc.send_signal(signal.SIGTERM)
    for p in procs:
        if p.proc is not None:
            try:
                p.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()
        if p.log_file is not None:
            p.log_file.close()


def wait_ready(url: str, timeout: float, procs: list[ServiceProcess]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return True
        for p in procs:
            if p.proc is not None and p.proc.poll() is not None:
                print(f"service {p.name} exited with {p.proc.returncode}:\n{p.tail()}", file=sys.stderr)
                return False
        time.sleep(0.5)
    return False


def dev_esl_password(workdir: Path) -> str:
    """A random Event Socket password for this machine's gateway-fs and `vp call --phone` (never ClueCon),
    kept in the work dir so both sides find it; a real deployment sets VP_FS_ESL_PASSWORD."""
    return dev_secret(workdir / ESL_PASSWORD_FILE)


def dev_secret(path: Path) -> str:
    """A random secret generated at first start and kept in ``path`` (mode 0600)."""
    if not path.is_file():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def run_up(args: argparse.Namespace) -> int:
    workdir: Path = args.workdir.resolve()
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    infra = Infra(workdir)
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    procs: list[ServiceProcess] = []
    status: StatusServer | None = None
    try:
        print("starting infrastructure (embedded servers where no URL is set)…", flush=True)
        infra.start()
        base_env = {
            **os.environ,
            **infra.env,
            "ROBOTS_DIR": str(args.robots.resolve()),
            "VP_LOG_FORMAT": "json",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        (workdir / ROBOTS_DIR_FILE).write_text(base_env["ROBOTS_DIR"] + "\n", encoding="utf-8")
        base_env.setdefault("VP_WEB_API_KEY", dev_secret(workdir / WEB_API_KEY_FILE))
        base_env.setdefault("VP_FS_ESL_PASSWORD", dev_esl_password(workdir))
        base_env.setdefault("VP_API_TOKENS_FILE", str(ensure_tokens_file(workdir / TOKENS_FILE)))
        # every call's stereo WAV (gateways write, the recorder serves and sweeps): docs/operations.md
        base_env.setdefault("VP_RECORDINGS_DIR", str(workdir / "data" / "recordings"))
        print(
            f"recorder API bearer tokens (operator, readonly): {base_env['VP_API_TOKENS_FILE']}", flush=True
        )
        from voiceplatform.phone_stream import SECRET_ENV, dev_stream_secret  # gateway-fs's stream key

        base_env.setdefault(SECRET_ENV, dev_stream_secret(workdir))
        procs = start_services(base_env, logs, args.port, _scale(args), extra_env=infra.service_env)
        print(f"started {len(procs)} service processes; logs in {logs}", flush=True)
        health = f"http://127.0.0.1:{args.port}/health"
        if not wait_ready(health, args.ready_timeout, procs):
            print(f"the pipeline did not become ready ({health}); see the logs in {logs}", file=sys.stderr)
            return 1
        print(f"ready: open http://127.0.0.1:{args.port} to talk to a robot from the browser", flush=True)
        console = console_url(procs)
        if console is not None:
            print(
                f"operator console and recorder API: {console} (sign in with the operator= token in "
                f"{base_env['VP_API_TOKENS_FILE']}); call recordings in {base_env['VP_RECORDINGS_DIR']}",
                flush=True,
            )
        print(f"call tokens for an embedding site: POST /tokens with the key in {workdir / WEB_API_KEY_FILE}")
        print("or: vp call --robot robots/pipeline_russian --wav caller.wav", flush=True)
        print(
            "or, as a phone call: vp call --phone --robot robots/pipeline_russian --wav caller.wav",
            flush=True,
        )
        if args.demo:
            from voiceplatform.cli.call import run_call
            from voiceplatform.cli.demo import demo_caller_wav

            wav = demo_caller_wav(workdir / "demo_caller.wav")
            demo_args = argparse.Namespace(
                robot="pipeline_russian",  # in the robots folder these services load
                wav=wav,
                url=f"ws://127.0.0.1:{args.port}/ws",
                out=workdir / "demo_reply.wav",
                json=False,
                tail_s=20.0,
                phone=False,
            )
            print(f"\ndemo call with {wav}:", flush=True)
            run_call(demo_args)
            if args.exit_after_demo:
                return 0
        supervisor = Supervisor(procs, report=lambda line: print(line, flush=True))
        try:
            status = StatusServer(supervisor, args.status_port).start()
            print(
                f"\nrunning; vp up status at http://127.0.0.1:{status.port}/health; Ctrl-C to stop",
                flush=True,
            )
        except OSError as exc:  # the port is taken: supervise anyway, without the endpoint
            print(f"\nrunning (no status endpoint: port {args.status_port}: {exc.strerror}); Ctrl-C to stop")
        while not stopping:
            time.sleep(0.5)
            if not stopping:
                supervisor.step()
        return 0
    finally:
        if status is not None:
            status.stop()
        print("stopping services (draining)…", flush=True)
        stop_services(procs)
        infra.stop()
