"""`vp up`'s supervisor: restart a crashed service with back-off, never stop the platform for it.

Policy (``RestartPolicy``): a service that exits while the platform runs is a crash. It is started
again after ``backoff_min_s`` doubling with each crash counted in the last ``window_s`` (capped at
``backoff_max_s``). After ``max_crashes`` crashes within the window the supervisor gives up on that
service alone: it stays down, the others keep running (a live call goes on wherever the platform
can still serve it), and the give-up is reported. Crashes older than the window are forgotten, so a
service that crashes once a day is restarted at once every time.

Every restart and give-up is printed on stdout and shown by ``StatusServer`` at
``http://127.0.0.1:<--status-port>/health`` (JSON; 200 while no service is given up, else 503).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Protocol

ChildState = Literal["running", "backoff", "given_up"]


class Child(Protocol):
    """A supervised process: ``start`` (re)launches it, ``poll`` is its exit code or None."""

    name: str

    def start(self) -> None: ...
    def poll(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    backoff_min_s: float = 1.0
    backoff_max_s: float = 30.0
    window_s: float = 300.0
    max_crashes: int = 5

    def delay(self, crashes_in_window: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_min_s * 2 ** max(0, crashes_in_window - 1)))


@dataclass
class _Tracked:
    child: Child
    state: ChildState = "running"
    crashes: deque[float] = field(default_factory=deque)
    restarts: int = 0
    last_exit: int | None = None
    restart_at: float = 0.0


class Supervisor:
    def __init__(
        self,
        children: Sequence[Child],
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        report: Callable[[str], None] = print,
    ) -> None:
        self.policy = policy or RestartPolicy()
        self._clock = clock
        self._report = report
        self._tracked = [_Tracked(child) for child in children]
        self._lock = threading.Lock()  # the status server reads from another thread

    def step(self) -> None:
        """Look at every child once: note crashes, restart those whose back-off has passed."""
        now = self._clock()
        with self._lock:
            for tracked in self._tracked:
                if tracked.state == "running":
                    code = tracked.child.poll()
                    if code is not None:
                        self._crashed(tracked, code, now)
                elif tracked.state == "backoff" and now >= tracked.restart_at:
                    tracked.child.start()
                    tracked.state = "running"
                    tracked.restarts += 1
                    self._report(f"{tracked.child.name}: restarted (restart {tracked.restarts})")

    def _crashed(self, tracked: _Tracked, code: int, now: float) -> None:
        policy = self.policy
        tracked.last_exit = code
        tracked.crashes.append(now)
        while tracked.crashes and now - tracked.crashes[0] > policy.window_s:
            tracked.crashes.popleft()
        crashes = len(tracked.crashes)
        name = tracked.child.name
        if crashes >= policy.max_crashes:
            tracked.state = "given_up"
            self._report(
                f"{name}: exited ({code}) {crashes} times in {policy.window_s:.0f} s; giving up on it "
                "(the other services keep running; see its log)"
            )
            return
        delay = policy.delay(crashes)
        tracked.state = "backoff"
        tracked.restart_at = now + delay
        self._report(f"{name}: exited ({code}); restarting in {delay:.1f} s ({crashes} crash(es) in window)")

    def status(self) -> dict[str, Any]:
        now = self._clock()
        with self._lock:
            services = {
                t.child.name: {
                    "state": t.state,
                    "restarts": t.restarts,
                    "crashes_in_window": sum(1 for c in t.crashes if now - c <= self.policy.window_s),
                    "last_exit": t.last_exit,
                    **(
                        {"restart_in_s": round(max(0.0, t.restart_at - now), 1)}
                        if t.state == "backoff"
                        else {}
                    ),
                }
                for t in self._tracked
            }
        given_up = sorted(name for name, s in services.items() if s["state"] == "given_up")
        restarting = any(s["state"] == "backoff" for s in services.values())
        status = "degraded" if given_up else "restarting" if restarting else "ok"
        return {"status": status, "given_up": given_up, "services": services}


class StatusServer:
    """``GET /health`` of ``vp up`` itself (127.0.0.1 only): the supervisor's status as JSON."""

    def __init__(self, supervisor: Supervisor, port: int, host: str = "127.0.0.1") -> None:
        sup = supervisor

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/health":
                    self._send(404, {"error": "only /health is served here"})
                    return
                body = sup.status()
                self._send(503 if body["given_up"] else 200, body)

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return None  # probes every few seconds would flood vp up's stdout

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="vp-up-status", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> StatusServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
