"""`vp up`'s supervisor: the restart policy on fake processes and a fake clock, then for real: a
service process (the prompt router on a private NATS) killed with SIGKILL is started again, and
``vp up``'s /health shows it."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from voiceplatform.cli.supervisor import RestartPolicy, StatusServer, Supervisor
from voiceplatform.cli.up import ServiceProcess
from voiceplatform_devstack.devinfra import EmbeddedNats, free_port

REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakeChild:
    def __init__(self, name: str) -> None:
        self.name = name
        self.exit_code: int | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.exit_code = None

    def poll(self) -> int | None:
        return self.exit_code


def make(policy: RestartPolicy, *names: str) -> tuple[Supervisor, dict[str, FakeChild], FakeClock, list[str]]:
    clock = FakeClock()
    lines: list[str] = []
    children = {n: FakeChild(n) for n in names}
    sup = Supervisor(list(children.values()), policy, clock=clock, report=lines.append)
    return sup, children, clock, lines


def crash_and_wait_restart(sup: Supervisor, child: FakeChild, clock: FakeClock) -> float:
    """Crash ``child``; step the clock by 0.25 s (exact in binary) until it is restarted; the delay."""
    child.exit_code = -9
    sup.step()
    crashed_at, starts = clock.t, child.starts
    while child.starts == starts:
        clock.t += 0.25
        sup.step()
        assert clock.t - crashed_at < 1000, "never restarted"
    return round(clock.t - crashed_at, 1)


def test_backoff_doubles_within_the_window_and_is_capped() -> None:
    policy = RestartPolicy(backoff_min_s=1.0, backoff_max_s=5.0, window_s=600.0, max_crashes=10)
    sup, children, clock, lines = make(policy, "tts-1")
    tts = children["tts-1"]
    delays = [crash_and_wait_restart(sup, tts, clock) for _ in range(5)]
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert sup.status()["services"]["tts-1"]["restarts"] == 5
    assert any("restarting in 1.0 s" in line for line in lines)
    assert any("tts-1: restarted" in line for line in lines)


def test_crashes_older_than_the_window_are_forgotten() -> None:
    policy = RestartPolicy(backoff_min_s=1.0, backoff_max_s=30.0, window_s=60.0, max_crashes=3)
    sup, children, clock, _ = make(policy, "asr-1")
    asr = children["asr-1"]
    for _ in range(10):  # one crash every 2 minutes: never given up, restarted after the minimum
        assert crash_and_wait_restart(sup, asr, clock) == 1.0
        clock.t += 120
        sup.step()
    assert sup.status()["services"]["asr-1"]["state"] == "running"


def test_gives_up_on_one_service_and_keeps_the_others() -> None:
    policy = RestartPolicy(backoff_min_s=1.0, backoff_max_s=30.0, window_s=300.0, max_crashes=3)
    sup, children, clock, lines = make(policy, "llm-1", "gateway-web-1")
    llm, gateway = children["llm-1"], children["gateway-web-1"]
    crash_and_wait_restart(sup, llm, clock)
    crash_and_wait_restart(sup, llm, clock)
    llm.exit_code = 1
    sup.step()  # third crash in the window
    for _ in range(100):
        clock.t += 1.0
        sup.step()
    assert llm.starts == 2  # never again
    assert gateway.starts == 0 and gateway.poll() is None  # untouched, still running
    status = sup.status()
    assert status["status"] == "degraded" and status["given_up"] == ["llm-1"]
    assert status["services"]["llm-1"] == {
        "state": "given_up", "restarts": 2, "crashes_in_window": 3, "last_exit": 1
    }  # fmt: skip
    assert status["services"]["gateway-web-1"]["state"] == "running"
    assert any("llm-1" in line and "giving up" in line for line in lines)


def test_status_while_backing_off() -> None:
    sup, children, clock, _ = make(RestartPolicy(backoff_min_s=4.0), "vad-1")
    children["vad-1"].exit_code = -11
    sup.step()
    clock.t += 1.0
    status = sup.status()
    assert status["status"] == "restarting" and status["given_up"] == []
    assert status["services"]["vad-1"]["restart_in_s"] == 3.0


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


def test_a_service_killed_with_sigkill_is_restarted(tmp_path: Path) -> None:
    nats = EmbeddedNats.start(tmp_path / "nats")  # private: the router joins no one else's queue group
    port = free_port()
    env = {
        **os.environ,
        "NATS_URL": nats.url,
        "ROBOTS_DIR": str(REPO / "robots"),
        "VP_HTTP_PORT": str(port),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    child = ServiceProcess("prompt-router-1", "vp_router", env, tmp_path / "router.log")
    lines: list[str] = []
    sup = Supervisor([child], RestartPolicy(backoff_min_s=0.2), report=lines.append)
    status = StatusServer(sup, 0).start()
    health = f"http://127.0.0.1:{port}/health"
    try:
        child.start()
        deadline = time.monotonic() + 90
        while not healthy(health):
            assert time.monotonic() < deadline, child.tail()
            sup.step()
            time.sleep(0.2)
        assert child.proc is not None
        first_pid = child.proc.pid
        os.kill(first_pid, signal.SIGKILL)
        while not (child.proc.pid != first_pid and healthy(health)):
            assert time.monotonic() < deadline + 90, child.tail()
            sup.step()
            time.sleep(0.2)
        code, body = get_json(f"http://127.0.0.1:{status.port}/health")
        assert code == 200 and body["status"] == "ok"
        assert body["services"]["prompt-router-1"]["restarts"] == 1
        assert body["services"]["prompt-router-1"]["last_exit"] == -signal.SIGKILL
        assert any("prompt-router-1: exited (-9)" in line for line in lines)
        assert get_json(f"http://127.0.0.1:{status.port}/nothing")[0] == 404
    finally:
        status.stop()
        if child.proc is not None and child.proc.poll() is None:
            child.proc.terminate()
            child.proc.wait(timeout=20)
        if child.log_file is not None:
            child.log_file.close()
        nats.stop()
