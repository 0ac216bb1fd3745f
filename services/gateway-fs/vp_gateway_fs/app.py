"""gateway-fs: phone calls from FreeSWITCH, as the workers see a browser call (apart from 8 kHz).

Wiring: the mod_audio_stream WebSocket (``/call/{uuid}?key=<secret>`` on ``VP_FS_STREAM_PORT``, a
listener of its own: stream_socket.py; what a stream does: stream.py), one ESL connection
to FreeSWITCH shared by every call (esl.py; events are routed to the call by ``Unique-ID``, and every
channel it announces is kept in ``ChannelRegistry``: a stream is served only for one of those), the
``GatewayDirectory`` of workers, ``/health`` (200 only with the whole pipeline and the ESL up),
``/metrics`` and ``/outbound`` on ``VP_HTTP_PORT``, and the drain on SIGTERM that gateway-web does.

ESL outages: calls go on (the caller's audio does not use the ESL), robot audio that cannot be
queued meanwhile is counted as lost; after ``VP_FS_ESL_OUTAGE_HANGUP_S`` calls end with reason
``esl_unavailable``. Back on line, channels we could not hang up are hung up, and live calls
whose channel vanished meanwhile (``uuid_exists`` false) end with reason ``channel_gone``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog
from fastapi import FastAPI

from voiceplatform import load
from voiceplatform.bus import Bus
from voiceplatform.config import RobotRegistry
from voiceplatform.gateway import GatewayDirectory
from voiceplatform.gateway.frame_outbox import FrameOutbox
from voiceplatform.logging import register_secret
from voiceplatform.runtime import TaskRegistry, cancel_and_wait
from vp_gateway_fs.call import PhoneCall
from vp_gateway_fs.channels import ChannelRegistry
from vp_gateway_fs.dialer import Dialer
from vp_gateway_fs.esl import EslClient, EslError, EslEvent
from vp_gateway_fs.greeting import GreetingCache
from vp_gateway_fs.outbound_api import outbound_router
from vp_gateway_fs.routing import RobotRouter
from vp_gateway_fs.settings import (
    GatewayFsSettings,
    parse_routes,
    password_problem,
    stream_secret_problem,
)
from vp_gateway_fs.sink import command_failed
from vp_gateway_fs.stream import StreamHandler
from vp_gateway_fs.stream_socket import serve_streams

log = structlog.get_logger("vp_gateway_fs")
SERVICE = "gateway-fs"
SUBSCRIPTION = (
    "CHANNEL_CREATE CHANNEL_PARK CHANNEL_ANSWER CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE "
    "DTMF PLAYBACK_START PLAYBACK_STOP CHANNEL_EXECUTE_COMPLETE BACKGROUND_JOB CUSTOM "
    "mod_audio_stream::play mod_audio_stream::connect mod_audio_stream::disconnect mod_audio_stream::error"
)
ANSWER_MEMORY_S = 60.0


class GatewayConfigError(ValueError):
    pass


class GatewayFs:
    name = SERVICE

    def __init__(self, settings: GatewayFsSettings) -> None:
        problem = password_problem(settings) or stream_secret_problem(settings)
        if problem:
            raise GatewayConfigError(problem)
        password = settings.fs_esl_password.get_secret_value()
        register_secret(password)
        register_secret(settings.fs_stream_secret.get_secret_value())
        if settings.fs_dial_api_key.get_secret_value():
            register_secret(settings.fs_dial_api_key.get_secret_value())
        self.channels = ChannelRegistry()  # what FreeSWITCH announced: the only channels we serve
        self.settings = settings
        self.router = RobotRouter(
            RobotRegistry(settings.robots_dir), parse_routes(settings.fs_routes), settings.fs_default_robot
        )
        self.esl = EslClient(
            settings.fs_esl_host,
            settings.fs_esl_port,
            password,
            subscription=SUBSCRIPTION,
            on_event=self._on_esl_event,
            on_state=self._on_esl_state,
            command_timeout_s=settings.fs_esl_command_timeout_s,
            reconnect_max_s=settings.fs_esl_reconnect_max_s,
        )
        self.bus: Bus | None = None
        self.directory: GatewayDirectory | None = None
        self.outbox: FrameOutbox | None = None  # caller frames of every call, batched (frame_outbox.py)
        self.calls: dict[str, PhoneCall] = {}  # by FreeSWITCH channel uuid
        self.answered: dict[str, float] = {}  # CHANNEL_ANSWER seen, stream not open yet
        self.orphans: set[str] = set()  # channels we must still hang up
        self.accepting = True
        self.streams = StreamHandler(self)
        self.stream_server: asyncio.Server | None = None
        self.stream_port = settings.fs_stream_port  # the bound one once started (0: any free port)
        self.dialer = Dialer(self)  # outbound campaigns (POST /outbound/campaigns)
        self._own_cache = settings.fs_greeting_cache_dir is None
        cache = settings.fs_greeting_cache_dir or Path(tempfile.mkdtemp(prefix="vp-gateway-fs-greetings-"))
        self.greetings = GreetingCache(cache)
        self._tasks = TaskRegistry()
        self._esl_task: asyncio.Task[None] | None = None

    async def start(self, bus: Bus) -> None:
        self.bus = bus
        if self.settings.fs_audio_batch_ms > 0:
            self.outbox = FrameOutbox(bus, self.settings.fs_audio_batch_ms, SERVICE)
        self.directory = GatewayDirectory(bus)
        await self.directory.start()
        # FreeSWITCH decides where calls go: max_calls is this gateway's planned share, for scaling
        load.track_calls(SERVICE, lambda: len(self.calls), self.settings.max_calls)
        await asyncio.to_thread(
            self.router.registry.load_all
        )  # checked before the first call (robot.invalid)
        self._esl_task = asyncio.create_task(self.esl.run(), name="esl")
        self.stream_server = await serve_streams(
            self.settings.http_host,
            self.settings.fs_stream_port,
            self.streams.handle,
            max_message_bytes=self.settings.max_message_bytes,
            spawn=lambda handling: self._tasks.spawn(handling, key="stream", name="stream"),
        )
        self.stream_port = self.stream_server.sockets[0].getsockname()[1]
        log.info("fs.stream_listening", port=self.stream_port)

    async def drain(self, timeout: float) -> None:
        """Stop taking calls; let live calls finish up to the timeout, then end them."""
        self.accepting = False
        if self.stream_server is not None:
            self.stream_server.close()  # no new streams; the open ones end with their calls
        await self.dialer.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.calls and loop.time() < deadline:
            await asyncio.sleep(0.1)
        for call in list(self.calls.values()):
            call.sink.drain_on_close = False
            await call.end("gateway_shutdown")
        if self.outbox is not None:
            await self.outbox.close()
        if self.directory is not None:
            await self.directory.stop()
        await self._tasks.cancel_all(1.0)
        if self._esl_task is not None:
            await cancel_and_wait(self._esl_task)
        if self._own_cache:
            shutil.rmtree(self.greetings.folder, ignore_errors=True)

    def ready(self) -> bool:
        return (
            self.directory is not None
            and not self.directory.missing_roles()
            and self.accepting
            and self.esl.connected
        )

    def health(self) -> dict[str, Any]:
        missing = self.directory.missing_roles() if self.directory else ["bus"]
        return {
            "active_calls": len(self.calls),
            "missing_services": missing,
            "esl_connected": self.esl.connected,
        }

    def asgi_app(self) -> FastAPI:
        app = FastAPI(title="voice-platform gateway-fs", docs_url=None, redoc_url=None)
        app.include_router(outbound_router(self))
        return app

    # ---- ESL ------------------------------------------------------------------------------------------
    def _on_esl_event(self, event: EslEvent) -> None:
        uuid = event.uuid
        self.channels.on_event(event)
        self.dialer.on_event(event)
        call = self.calls.get(uuid)
        if event.name == "CHANNEL_ANSWER" and call is None:
            cutoff = time.monotonic() - ANSWER_MEMORY_S
            for old in [u for u, t in self.answered.items() if t < cutoff]:
                del self.answered[old]
            self.answered[uuid] = event.received
        elif event.name == "CHANNEL_HANGUP_COMPLETE":
            self.answered.pop(uuid, None)
            self.orphans.discard(uuid)
        if call is not None:
            call.on_event(event)
        elif event.subclass == "mod_audio_stream::error":
            # the stream never reached a gateway (connect failed): nobody can serve this caller
            log.error("fs.stream_failed_before_call", uuid=uuid, detail=event.body[:200])
            self._tasks.spawn(self._reject_channel(uuid), key="reject", name=f"reject-{uuid}")

    def _on_esl_state(self, up: bool) -> None:
        if not self.accepting:
            return  # draining: the connection is being closed on purpose
        if up:
            for task in self._tasks.tasks_for("outage"):
                task.cancel()
            self._tasks.spawn(self._after_reconnect(), key="reconnect", name="esl-reconnected")
        else:
            log.error("fs.esl_down", live_calls=len(self.calls))
            self._tasks.spawn(self._outage(), key="outage", name="esl-outage")

    async def _reject_channel(self, uuid: str) -> None:
        try:
            reply = await self.esl.api(f"uuid_kill {uuid} NORMAL_TEMPORARY_FAILURE")
        except EslError as exc:
            command_failed("uuid_kill", uuid, exc)
            return
        if not reply.ok:
            command_failed("uuid_kill", uuid, reply)

    def orphan(self, uuid: str) -> None:
        """A channel we ended but could not hang up: hang it up as soon as the ESL answers."""
        self.orphans.add(uuid)
        if self.esl.connected:
            self._tasks.spawn(self._kill_orphans(), key="orphans", name="esl-orphans")

    async def _kill_orphans(self) -> None:
        for uuid in list(self.orphans):
            with contextlib.suppress(EslError):
                reply = await self.esl.api(f"uuid_kill {uuid} NORMAL_CLEARING")
                self.orphans.discard(uuid)
                log.info("fs.orphan_hung_up", uuid=uuid, reply=reply.text[:60])

    async def _outage(self) -> None:
        await asyncio.sleep(self.settings.fs_esl_outage_hangup_s)
        if self.esl.connected:
            return
        for call in list(self.calls.values()):
            call.sink.drain_on_close = False
            self._tasks.spawn(call.end("esl_unavailable"), key="end", name=f"end-{call.uuid}")

    async def _after_reconnect(self) -> None:
        await self._kill_orphans()
        for uuid, call in list(self.calls.items()):
            with contextlib.suppress(EslError):
                reply = await self.esl.api(f"uuid_exists {uuid}")
                if reply.text.strip() == "false":
                    call.channel_gone()


def build() -> tuple[GatewayFs, GatewayFsSettings]:
    settings = GatewayFsSettings()
    try:
        return GatewayFs(settings), settings
    except (GatewayConfigError, ValueError) as exc:
        raise SystemExit(f"gateway-fs: {exc}") from None
