"""The service runner: connect the bus, serve /health and /metrics, start, and drain on SIGTERM.

A service implements ``Service``; ``run_service`` does the rest, the same way for every worker.
SIGTERM (or SIGINT) → ``service.drain()`` (stop taking new work, finish in-flight turns up to the
drain timeout) → ``bus.drain()`` → HTTP server stops → exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Protocol, TypeVar

import structlog
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from voiceplatform import load, subjects, tracing
from voiceplatform.bus import Bus
from voiceplatform.bus.auth import NatsAuth
from voiceplatform.bus.nats import NatsBus
from voiceplatform.clock import now_ms
from voiceplatform.config.settings import ServiceSettings
from voiceplatform.logging import configure_logging, register_secret
from voiceplatform.wire import WorkerHeartbeat

log = structlog.get_logger("voiceplatform.runtime")


class Service(Protocol):
    name: str

    async def start(self, bus: Bus) -> None: ...
    async def drain(self, timeout: float) -> None: ...
    def ready(self) -> bool: ...
    def health(self) -> dict[str, Any]: ...
    def asgi_app(self) -> Starlette | None: ...


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the runner owns SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def build_http_app(service: Service, bus_ref: list[Bus], state: dict[str, str]) -> Starlette:
    app = service.asgi_app() or Starlette()

    async def health(_: Request) -> Response:
        bus_ok = bool(bus_ref) and bus_ref[0].connected
        ready = state["phase"] == "running" and bus_ok and service.ready()
        body = {
            "service": service.name,
            "status": "ok" if ready else state["phase"],
            "bus_connected": bus_ok,
            **service.health(),
            "load": load.snapshot(),
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    async def live(_: Request) -> Response:
        # liveness: the event loop answers (a draining or not-yet-ready process is alive)
        return JSONResponse({"service": service.name, "phase": state["phase"]})

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.add_route("/health", health, methods=["GET"])
    app.add_route("/live", live, methods=["GET"])
    app.add_route("/metrics", metrics, methods=["GET"])
    return app


async def run_service(
    service: Service,
    settings: ServiceSettings,
    bus: Bus | None = None,
    stop: asyncio.Event | None = None,
    settle_heap: bool = False,
) -> None:
    """Run until SIGTERM/SIGINT (or ``stop`` is set), then drain gracefully.

    ``settle_heap``: the service owns its process (``service_main``), so what start-up built is
    frozen out of garbage collection once it runs. Not where services share a process (tests, one
    process for the whole stack): objects frozen there are never collected once they are garbage."""
    for secret in (settings.postgres_dsn, settings.redis_url, settings.mongo_uri, settings.nats_password):
        if secret is not None:
            register_secret(secret.get_secret_value())
    tracing.configure_from(settings, service.name)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    state = {"phase": "starting"}
    bus_ref: list[Bus] = []
    app = build_http_app(service, bus_ref, state)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_level="warning",
        lifespan="off",
        # the sans-I/O WebSocket protocol: a caller's frame reaches the handler's receive() without
        # the legacy implementation's reader task in between (51 -> 39 µs per 20 ms frame received)
        ws="websockets-sansio",
        ws_per_message_deflate=settings.ws_per_message_deflate,
    )
    server = _QuietServer(config)
    http_task = asyncio.create_task(server.serve(), name="http")
    while not server.started and not http_task.done():
        await asyncio.sleep(0.01)
    if http_task.done():
        await http_task  # re-raise the bind error
    port = server.servers[0].sockets[0].getsockname()[1] if server.servers else settings.http_port

    try:
        if bus is None:
            # a NATS that is gone (or refuses our login) retries forever: SIGTERM must still end us
            bus = await _unless_stopped(
                NatsBus.connect(
                    settings.nats_url,
                    service.name,
                    js_replicas=settings.js_replicas,
                    **NatsAuth.of(settings).options(),
                ),
                stop,
            )
            if bus is None:
                log.warning("service.stopped_before_start", reason="no NATS connection when told to stop")
                return
        bus_ref.append(bus)
        if not await _unless_stopped(_start(service, bus), stop):
            log.warning("service.stopped_before_start", reason="still starting when told to stop")
            await _bounded(bus.close(), settings.drain_timeout_s)
            return
        state["phase"] = "running"
        if settle_heap:
            _settle_heap()
        presence_task = asyncio.create_task(_announce(bus, service, settings, state), name="presence")
        log.info("service.started", http_port=port, instance_id=settings.instance_id)
        await stop.wait()
        state["phase"] = "draining"
        log.info("service.draining", timeout_s=settings.drain_timeout_s)
        await service.drain(settings.drain_timeout_s)
        presence_task.cancel()  # alive (not ready) until drained: its calls are not orphans yet
        if not await _bounded(bus.drain(), settings.drain_timeout_s):
            log.warning("service.bus_drain_timeout", timeout_s=settings.drain_timeout_s)
            await _bounded(bus.close(), 1.0)
    finally:
        server.should_exit = True
        await http_task
        await asyncio.to_thread(tracing.shutdown)  # exports the spans still buffered
        log.info("service.stopped")


T = TypeVar("T")


def _settle_heap() -> None:
    """What start-up built (modules, models, settings) is left out of every later garbage collection.

    Per-frame work keeps triggering collections, and the older generations' passes would walk those
    hundreds of thousands of objects each time: ~7 % of gateway-fs's CPU at 40 calls (perf)."""
    gc.collect()
    gc.freeze()


async def _start(service: Service, bus: Bus) -> bool:
    await service.start(bus)
    return True


async def _unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """``work``'s result, or None (``work`` cancelled) if ``stop`` is set first."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return None


async def _bounded(work: Awaitable[Any], timeout_s: float) -> bool:
    """Await ``work`` for at most ``timeout_s``; False when it had to be abandoned."""
    try:
        await asyncio.wait_for(work, timeout_s)
    except TimeoutError:
        return False
    return True


async def _announce(bus: Bus, service: Service, settings: ServiceSettings, state: dict[str, str]) -> None:
    """Presence each second while the process lives; ``ready`` says whether it takes work now.

    A gateway that is alive but not ready (a stage missing, draining) still owns its calls: the
    recorder closes them as ``gateway_lost`` only when its presence stops altogether.
    """
    since_ms = now_ms()
    while True:
        beat = WorkerHeartbeat(
            call_id="",
            role=service.name,
            instance_id=settings.instance_id,
            since_ms=since_ms,
            ready=state["phase"] == "running" and service.ready(),
            load=load.stage_loads(),
        )
        with contextlib.suppress(Exception):
            await bus.publish(subjects.presence(service.name), beat)
        await asyncio.sleep(1.0)


def run_event_loop(main: Coroutine[Any, Any, None], event_loop: str) -> None:
    """``asyncio.run(main)`` on the event loop named by ``ServiceSettings.event_loop``.

    uvloop matters where every caller frame passes through: its transports, timers and futures are
    C, and pausing and resuming a socket's reading (uvicorn does both for every WebSocket message)
    costs no epoll system calls of its own."""
    if event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:  # a platform without it (uvicorn[standard] skips it on Windows)
            log.warning("service.uvloop_missing", fallback="asyncio")
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(main)
            return
    asyncio.run(main)


def service_main(factory: Callable[[], tuple[Service, ServiceSettings]]) -> None:
    """Console entry point helper: build the service, configure logs, run it."""
    service, settings = factory()
    configure_logging(service.name, settings.log_level)
    run_event_loop(run_service(service, settings, settle_heap=True), settings.event_loop)
