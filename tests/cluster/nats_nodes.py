"""NATS nodes on namespace hosts: a cluster of three (the configuration ``vp nats-config
--cluster-hosts`` writes, with literal passwords) or a single server for the one-host comparison."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster.netns import Host
from voiceplatform.bus.natsconf import (
    CLIENT_PORT,
    MONITOR_PORT,
    cluster_node_config,
    embedded_config,
)
from voiceplatform_devstack.devinfra import nats_server_binary


class NatsNodeError(RuntimeError):
    pass


@dataclass
class NatsNode:
    name: str  # server_name: vp-nats-<n>
    host: Host
    config: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host.ip}:{CLIENT_PORT}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.host.exec_prefix(), str(nats_server_binary()), "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """kill -9: no goodbye to clients or routes."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        """JetStream on this node is current with the cluster (``/healthz``)."""
        url = f"http://{self.host.ip}:{MONITOR_PORT}/healthz"
        with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200 and json.loads(response.read()).get("status") == "ok"
        return False


@dataclass
class NatsNodes:
    nodes: list[NatsNode]

    @property
    def url(self) -> str:
        """NATS_URL for the services: every node, comma-separated."""
        return ",".join(n.url for n in self.nodes)

    def by_name(self, name: str) -> NatsNode:
        return next(n for n in self.nodes if n.name == name)

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(n.healthy() for n in self.nodes if n.running):
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n.name}\n{_tail(n.log_path)}" for n in self.nodes)
                raise NatsNodeError(f"NATS nodes not healthy after {timeout_s}s:\n{logs}")
            time.sleep(0.2)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def start_nats(hosts: list[Host], workdir: Path, passwords: Mapping[str, str]) -> NatsNodes:
    """One node per host: a cluster when there are several, else a single server; healthy on return."""
    workdir.mkdir(parents=True, exist_ok=True)
    nodes = []
    for index, host in enumerate(hosts, 1):
        store = workdir / f"node{index}"
        store.mkdir(exist_ok=True)
        path = workdir / f"nats-{index}.conf"
        if len(hosts) > 1:
            text = cluster_node_config(
                tuple(h.ip for h in hosts),
                index,
                lambda user: json.dumps(passwords[user]),
                store_dir=str(store / "jetstream"),
                listen_host=host.ip,
            )
        else:
            head = (
                f'server_name: "vp-nats-1"\nlisten: "{host.ip}:{CLIENT_PORT}"\n'
                f'http: "{host.ip}:{MONITOR_PORT}"\nmax_payload: 2MB\n'
                f'jetstream {{\n  store_dir: "{store / "jetstream"}"\n}}\n'
            )
            text = head + embedded_config(passwords)
        _private(path, text)
        nodes.append(NatsNode(f"vp-nats-{index}", host, path, workdir / f"nats-{index}.log"))
    cluster = NatsNodes(nodes)
    for node in nodes:
        node.start()
    cluster.wait_healthy()
    return cluster
