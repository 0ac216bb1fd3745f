"""mod_audio_stream's WebSocket, one per call: metadata first, then 20 ms L16 frames of the caller.

The dialplan starts the stream ``mono`` (the caller alone) at 8k or 16k; the metadata's ``rate`` or
``VP_FS_SAMPLE_RATE`` says which.

``/call/{uuid}`` (the dialplan puts ``${uuid}`` in the URL; ``/call`` with ``"uuid"`` in the
metadata works too). Bad input never takes the gateway down and never leaves a call unrecorded:
- frames that are not whole 20 ms frames (odd sizes, odd byte counts) are re-framed by
  ``FrameAssembler`` and counted; oversized ones are dropped and counted;
- text frames after the metadata are counted and ignored;
- no metadata (audio first, or nothing within ``VP_FS_METADATA_TIMEOUT_S``): the default robot,
  or, without one, a refusal;
- a refused stream (no route, unusable metadata, no channel uuid) is closed with 1008 and its channel
  hung up (``uuid_kill``, cause UNALLOCATED_NUMBER or CALL_REJECTED). It never started a call, so
  it has no call record: it is logged and counted in ``vp_gateway_fs_rejected_total{reason}``;
- the stream closing while FreeSWITCH has not reported a hangup (a dropped socket, a stream
  stopped mid-sentence): the call ends with reason ``stream_closed`` and the channel is hung up,
  since a caller nobody hears must not be left in a parked call.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import TYPE_CHECKING

import structlog
from fastapi import WebSocket, WebSocketDisconnect
from prometheus_client import Counter

from voiceplatform import metrics
from voiceplatform.config import RobotConfig
from voiceplatform.gateway import CallSession, FrameAssembler
from voiceplatform.logging import bind_call
from voiceplatform.wire import frame_bytes
from vp_gateway_fs.call import PhoneCall
from vp_gateway_fs.esl import EslError
from vp_gateway_fs.routing import NO_METADATA, RoutingError, StreamMeta, parse_metadata
from vp_gateway_fs.sink import FsSink, command_failed

if TYPE_CHECKING:
    from vp_gateway_fs.app import GatewayFs

log = structlog.get_logger("vp_gateway_fs.stream")
SERVICE = "gateway-fs"
_FRAMES_IN = metrics.FRAMES_IN.labels(SERVICE)  # bound once: the audio path runs 50 times a second per call
BAD_INPUT = Counter("vp_gateway_fs_bad_input_total", "Stream frames rejected or repaired", ["reason"])
REJECTED = Counter("vp_gateway_fs_rejected_total", "Streams refused before a call started", ["reason"])
_UUID = re.compile(r"^[A-Za-z0-9-]{8,64}$")
# how long a closed stream waits for FreeSWITCH's CHANNEL_HANGUP_COMPLETE to name the reason
HANGUP_GRACE_S = 0.5


class StreamHandler:
    def __init__(self, gateway: GatewayFs) -> None:
        self.gw = gateway
        self.settings = gateway.settings

    async def handle(self, ws: WebSocket, path_uuid: str | None) -> None:
        await ws.accept()
        meta, first_audio = await self._first_frame(ws)
        if meta is None:
            return  # closed before saying anything
        uuid = path_uuid or meta.uuid
        if path_uuid and meta.uuid and meta.uuid != path_uuid:
            log.warning("fs.stream_uuid_mismatch", path_uuid=path_uuid)
        if not uuid or not _UUID.match(uuid):
            await self._reject(ws, "", "no_uuid", "the stream names no channel uuid (use /call/${uuid})")
            return
        if not self.gw.accepting or self.gw.bus is None:
            await self._reject(ws, uuid, "draining", "gateway is not accepting calls", code=1013)
            return
        if uuid in self.gw.calls:
            await self._reject(ws, uuid, "duplicate", "a stream for this channel is already open", kill=False)
            return
        if not meta.present and not self.gw.router.default_robot:
            await self._reject(
                ws, uuid, "no_metadata", "the stream sent no metadata and there is no default robot"
            )
            return
        try:
            robot, how = self.gw.router.route(meta)
        except RoutingError as exc:
            await self._reject(ws, uuid, exc.reason, str(exc), cause="UNALLOCATED_NUMBER")
            return
        rate = meta.rate or self.settings.fs_sample_rate
        await self._run_call(ws, uuid, robot=robot, how=how, meta=meta, rate=rate, first_audio=first_audio)

    async def _first_frame(self, ws: WebSocket) -> tuple[StreamMeta | None, bytes | None]:
        try:
            first = await asyncio.wait_for(ws.receive(), timeout=self.settings.fs_metadata_timeout_s)
        except TimeoutError:
            BAD_INPUT.labels("no_metadata").inc()
            return NO_METADATA, None
        except (WebSocketDisconnect, RuntimeError):
            return None, None
        if first.get("type") == "websocket.disconnect":
            return None, None
        if first.get("bytes") is not None:
            BAD_INPUT.labels("no_metadata").inc()
            return NO_METADATA, first["bytes"]
        try:
            return parse_metadata(first.get("text") or ""), None
        except RoutingError:
            BAD_INPUT.labels("bad_metadata").inc()
            log.error("fs.bad_metadata")
            return NO_METADATA, None

    async def _reject(
        self,
        ws: WebSocket,
        uuid: str,
        reason: str,
        message: str,
        *,
        code: int = 1008,
        cause: str = "CALL_REJECTED",
        kill: bool = True,
    ) -> None:
        REJECTED.labels(reason).inc()
        # a routing failure names the dialed number: personal data, logged only as such
        detail = {"pii_detail": message} if reason == "no_route" else {"detail": message[:200]}
        log.error("fs.stream_rejected", uuid=uuid, reason=reason, **detail)
        with contextlib.suppress(Exception):
            await ws.close(code=code, reason=message[:120])
        if uuid and kill:
            try:
                reply = await self.gw.esl.api(f"uuid_kill {uuid} {cause}")
            except EslError as exc:
                command_failed("uuid_kill", uuid, exc)
                self.gw.orphan(uuid)
                return
            if not reply.ok:
                command_failed("uuid_kill", uuid, reply)

    async def _run_call(
        self,
        ws: WebSocket,
        uuid: str,
        *,
        robot: RobotConfig,
        how: str,
        meta: StreamMeta,
        rate: int,
        first_audio: bytes | None,
    ) -> None:
        gw = self.gw
        assert gw.bus is not None
        call_id = f"phone-{uuid}"
        capture = gw.greetings.capture(robot, rate, call_id)
        holder: list[PhoneCall] = []
        sink = FsSink(
            ws,
            gw.esl,
            uuid,
            rate,
            first_segment_ms=self.settings.fs_first_segment_ms,
            segment_ms=self.settings.fs_segment_ms,
            forward_events=self.settings.fs_forward_events,
            on_channel_gone=lambda: holder[0].channel_gone() if holder else None,
        )
        session = CallSession(
            gw.bus,
            robot,
            channel="phone",
            sample_rate=rate,
            sink=sink,
            directory=gw.directory,
            call_id=call_id,
            caller=meta.caller,
            gateway_id=self.settings.instance_id,
            lead_frames=self.settings.fs_lead_frames,
            greeting_audio=gw.greetings.cached(robot, rate),
        )
        call = PhoneCall(
            uuid=uuid,
            session=session,
            sink=sink,
            bus=gw.bus,
            esl=gw.esl,
            recordings_dir=self.settings.fs_recordings_dir,
            answered_at=gw.answered.pop(uuid, None),
            greeting_capture=capture,
        )
        holder.append(call)
        gw.calls[uuid] = call
        assembler = FrameAssembler(rate, rate)
        with bind_call(call_id=call.call_id):
            log.info("fs.call_routed", uuid=uuid, robot=robot.name, how=how, rate=rate, pii_dnis=meta.dnis)
            try:
                await call.start()
                if first_audio:
                    await self._audio(call, assembler, first_audio, rate)
                reason = await self._receive_loop(ws, call, assembler, rate)
                if reason == "stream_closed":
                    # FreeSWITCH closes the stream when the caller hangs up: let its event name the reason
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(call.hangup_seen.wait(), HANGUP_GRACE_S)
                    if not call.hangup_seen.is_set():
                        log.warning("fs.stream_closed_mid_call", uuid=uuid)
                        sink.drain_on_close = False
                await call.end(session.end_reason or reason)
            finally:
                await call.end(session.end_reason or "gateway_error")
                gw.calls.pop(uuid, None)
                if sink.channel_alive and sink.hangup_on_close:
                    gw.orphan(uuid)  # the hangup did not get through: retried when the ESL is back

    async def _receive_loop(
        self, ws: WebSocket, call: PhoneCall, assembler: FrameAssembler, rate: int
    ) -> str:
        frame = frame_bytes(rate)
        while not call.session.ended:
            try:
                message = await ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return "stream_closed"
            if message.get("type") == "websocket.disconnect":
                return "stream_closed"
            data = message.get("bytes")
            if data is None:
                BAD_INPUT.labels("text_frame").inc()
                continue
            if len(data) > self.settings.max_message_bytes:
                BAD_INPUT.labels("too_large").inc()
                continue
            if len(data) % frame:
                BAD_INPUT.labels("odd_bytes" if len(data) % 2 else "frame_size").inc()
            await self._audio(call, assembler, data, rate)
        return call.session.end_reason

    @staticmethod
    async def _audio(call: PhoneCall, assembler: FrameAssembler, data: bytes, rate: int) -> None:
        _FRAMES_IN.inc()
        for piece in assembler.push(data):
            await call.session.push_audio(piece)
