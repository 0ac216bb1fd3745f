"""Hosts made of Linux network namespaces on one bridge: each host its own IP address, the root
namespace on the bridge too (10.x.y.1, where PostgreSQL/Redis and the test live).

Names carry the creating process id (``vpc<pid>-<host>``), so a crashed run never collides with the
next, and ``sweep_stale()`` removes what a dead run left behind. Needs root (``ip netns add``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field

PREFIX = "vpc"


class NetnsError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def netns_available() -> str:
    """Empty when namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"{PREFIX}{os.getpid()}-probe"
    done = _ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"ip netns add failed: {done.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_inside(ns: str) -> None:
    """SIGKILL what still runs in ``ns`` (only processes started in our own namespace)."""
    done = _ip("netns", "pids", ns, check=False)
    for pid in (int(p) for p in done.stdout.split() if p.isdigit()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def sweep_stale() -> list[str]:
    """Remove namespaces and bridges of runs whose process is gone; the names removed."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        owner = name[len(PREFIX) :].split("-", 1)[0]
        if name.startswith(PREFIX) and owner.isdigit() and not _alive(int(owner)):
            _kill_inside(name)
            _ip("netns", "del", name, check=False)
            removed.append(name)
    for line in _ip("-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        name = line.split(":")[1].strip() if ":" in line else ""
        owner = name[len(PREFIX) + 1 :]
        if name.startswith(PREFIX + "b") and owner.isdigit() and not _alive(int(owner)):
            _ip("link", "del", name, check=False)
            removed.append(name)
    return removed


@dataclass
class Host:
    name: str
    ns: str
    ip: str
    veth: str  # the root side of its cable, on the bridge

    def exec_prefix(self) -> list[str]:
        """What runs a command on this host (nothing for the root namespace's own host)."""
        return ["ip", "netns", "exec", self.ns] if self.ns else []

    def cut(self) -> None:
        """Unplug the host: its cable goes down, every packet to and from it is lost."""
        _ip("link", "set", self.veth, "down")

    def plug(self) -> None:
        _ip("link", "set", self.veth, "up")


@dataclass
class Network:
    """A bridge in the root namespace and the hosts plugged into it."""

    subnet: str  # "10.a.b" (a /24)
    bridge: str
    run: str
    hosts: dict[str, Host] = field(default_factory=dict)

    @classmethod
    def create(cls) -> Network:
        sweep_stale()
        pid = os.getpid()
        used = _ip("-4", "addr", check=False).stdout
        for attempt in range(50):
            subnet = f"10.{200 + (pid + attempt) % 50}.{(pid // 50 + attempt) % 250}"
            if f" {subnet}." not in used:
                break
        else:
            raise NetnsError("no free 10.x.y.0/24 for the test network")
        net = cls(subnet, f"{PREFIX}b{pid}", f"{PREFIX}{pid}")
        try:
            _ip("link", "add", net.bridge, "type", "bridge")
            _ip("addr", "add", f"{subnet}.1/24", "dev", net.bridge)
            _ip("link", "set", net.bridge, "up")
        except NetnsError:
            net.destroy()
            raise
        return net

    @property
    def root(self) -> Host:
        """The root namespace on the bridge: the test itself, PostgreSQL, Redis."""
        return Host("root", "", f"{self.subnet}.1", "")

    def add_host(self, name: str) -> Host:
        index = len(self.hosts) + 2
        host = Host(name, f"{self.run}-{name}", f"{self.subnet}.{index}", f"{self.run}h{index}")
        self.hosts[name] = host
        _ip("netns", "add", host.ns)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
        _ip("link", "set", host.veth, "master", self.bridge, "up")
        _ip("-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        _ip("-n", host.ns, "link", "set", "eth0", "up")
        _ip("-n", host.ns, "link", "set", "lo", "up")
        return host

    def destroy(self) -> None:
        """Kill what runs in the hosts, remove them and the bridge; never raises."""
        for host in self.hosts.values():
            _kill_inside(host.ns)
        deadline = time.monotonic() + 5
        for host in self.hosts.values():
            while _ip("netns", "pids", host.ns, check=False).stdout.strip() and time.monotonic() < deadline:
                time.sleep(0.05)
            _ip("link", "del", host.veth, check=False)
            _ip("netns", "del", host.ns, check=False)
        _ip("link", "del", self.bridge, check=False)
        self.hosts.clear()
