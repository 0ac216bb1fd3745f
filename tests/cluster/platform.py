"""The platform spread over namespace hosts (docs/deploy-cluster.md):

- ``nats1..3``: one NATS node each, a cluster with JetStream (streams and KV at ``VP_JS_REPLICAS=3``);
- ``edge``: gateway-web, on the host's own address;
- ``w1``, ``w2`` (``w3`` when added): every worker (vad, asr, prompt-router, llm, tts) on the
  instant engines of bench/instant_engines.py, so the CPU goes to the platform, not to models;
- the root namespace: the recorder, next to PostgreSQL and Redis on loopback;
- ``caller``: where calls come from (tests/cluster/caller.py).

``ONE_HOST`` is the comparison for bench/bench_cluster.py: one NATS server and every service on one host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.platform_stack import make_robot, service_env
from tests.cluster.nats_nodes import NatsNodes, start_nats
from tests.cluster.netns import Host, Network
from voiceplatform.cli.up import ServiceProcess, stop_services, wait_ready
from voiceplatform.credentials import LocalCredentials

REPO = Path(__file__).resolve().parents[2]
ROBOT = "bench_instant"
WORKERS = ("vad", "asr", "prompt-router", "llm", "tts")
GATEWAY_PORT = 8080
SILENCE_FRAMES = 15  # the VAD's hang-over: 300 ms of silence ends an utterance

# host -> services on it ("root" is the root namespace); NATS hosts come first in the layout
CLUSTER = {"edge": ("gateway-web",), "w1": WORKERS, "w2": WORKERS, "root": ("recorder",)}
ONE_HOST = {"solo": ("gateway-web", *WORKERS), "root": ("recorder",)}


class ClusterError(RuntimeError):
    pass


@dataclass
class HostProcess(ServiceProcess):
    """A service process started on a namespace host (``ip netns exec`` keeps the pid: it execs)."""

    host: Host | None = None

    def start(self) -> None:
        if self.log_file is not None:
            self.log_file.close()
        self.log_file = self.log_path.open("ab")
        prefix = self.host.exec_prefix() if self.host is not None else []
        argv = [sys.executable, "-m", *self.module.split()]
        self.proc = _popen([*prefix, *argv], self.env, self.log_file)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _popen(argv: list[str], env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def _module(role: str) -> str:
    if role == "gateway-web":  # its robot check must know the instant engines
        return "bench.platform_stack --serve gateway-web"
    if role == "recorder":
        return "vp_recorder"
    return f"bench.platform_stack --serve {role}"  # the worker on instant engines


@dataclass
class ClusterPlatform:
    net: Network
    nats: NatsNodes
    workdir: Path
    credentials: LocalCredentials
    base_env: dict[str, str]
    procs: list[HostProcess] = field(default_factory=list)

    @property
    def edge(self) -> Host:
        return self.net.hosts.get("edge") or self.net.hosts["solo"]

    @property
    def url(self) -> str:
        return f"ws://{self.edge.ip}:{GATEWAY_PORT}/ws"

    @property
    def health(self) -> str:
        return f"http://{self.edge.ip}:{GATEWAY_PORT}/health"

    def host(self, name: str) -> Host:
        return self.net.root if name == "root" else self.net.hosts[name]

    def on(self, host: str) -> list[HostProcess]:
        return [p for p in self.procs if p.host is not None and p.host.name == host]

    def start_host(self, name: str, roles: tuple[str, ...]) -> list[HostProcess]:
        """Start ``roles`` on host ``name`` (made now if new); returns once each logged its start."""
        host = self.host(name) if name == "root" or name in self.net.hosts else self.net.add_host(name)
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        started = []
        for role in roles:
            env = {**self.base_env, **self.credentials.nats_env(role)}
            if role == "gateway-web":
                env.update(VP_HTTP_HOST=host.ip, VP_HTTP_PORT=str(GATEWAY_PORT))
            proc = HostProcess(f"{role}@{name}", _module(role), env, logs / f"{name}-{role}.log", host=host)
            proc.start()
            started.append(proc)
        self.procs += started
        deadline = time.monotonic() + 180
        for proc in started:
            while "service.started" not in proc.log_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise ClusterError(f"{proc.name} did not start:\n{proc.tail(30)}")
                time.sleep(0.3)
        return started

    def logs_text(self, lines: int = 15) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail(lines)}" for p in self.procs)

    def hosts_with(self, call_id: str, role: str) -> list[str]:
        """Hosts whose ``role`` logged ``call_id`` (who held or worked on the call)."""
        procs = [p for p in self.procs if p.host is not None and p.name.startswith(role + "@")]
        return sorted({p.host.name for p in procs if p.host is not None and call_id in p.log_text()})

    def stop(self) -> None:
        try:
            stop_services(list(self.procs), timeout=10)
        finally:
            self.nats.stop()
            self.net.destroy()


def launch(
    workdir: Path,
    postgres_dsn: str,
    redis_url: str,
    layout: dict[str, tuple[str, ...]] = CLUSTER,
    nats_nodes: int = 3,
) -> ClusterPlatform:
    """Hosts, NATS and services of ``layout``; ready (the gateway sees a whole pipeline) on return.
    Whatever fails half-way is torn down before the error propagates."""
    net = Network.create()
    nats: NatsNodes | None = None
    platform: ClusterPlatform | None = None
    try:
        credentials = LocalCredentials.load_or_create(workdir)
        # one node: the NATS server shares the services' host (the one-host comparison)
        names = ["solo"] if nats_nodes == 1 else [f"nats{i}" for i in range(1, nats_nodes + 1)]
        nats_hosts = [net.add_host(name) for name in names]
        net.add_host("caller")
        nats = start_nats(nats_hosts, workdir / "nats", credentials.nats)
        robots = make_robot(workdir / "robots", SILENCE_FRAMES)
        config_path = robots / ROBOT / "config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["greeting_text"] = "Здравствуйте!"  # the caller starts talking after the greeting
        config_path.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
        base_env = {
            **os.environ,
            **service_env(robots, nats.url),
            "POSTGRES_DSN": postgres_dsn,
            "REDIS_URL": redis_url,
            "VP_JS_REPLICAS": str(min(3, nats_nodes)),
            "VP_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        }
        platform = ClusterPlatform(net, nats, workdir, credentials, base_env)
        for host, roles in layout.items():
            platform.start_host(host, roles)
        if not wait_ready(platform.health, 120, platform.procs):
            raise ClusterError(f"the gateway never saw a whole pipeline:\n{platform.logs_text()}")
        return platform
    except BaseException:
        if platform is not None:
            platform.stop()
        else:
            if nats is not None:
                nats.stop()
            net.destroy()
        raise
