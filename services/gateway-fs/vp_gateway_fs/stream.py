"""mod_audio_stream's WebSocket, one per call: metadata first, then 20 ms L16 frames of the caller.

The dialplan starts the stream ``mono`` (the caller alone) at 8k or 16k; the metadata's ``rate`` or
``VP_FS_SAMPLE_RATE`` says which.

Who may stream (checked in this order; each refusal is closed with 1008 and a reason, logged and
counted in ``vp_gateway_fs_rejected_total{reason}``):
- ``?key=<VP_FS_STREAM_SECRET>`` in the URL, compared in constant time (``no_secret``,
  ``bad_secret``); nothing else about such a stream is read or acted on;
- ``/call/{uuid}`` names a channel our FreeSWITCH announced on the Event Socket and has not hung up
  (``unknown_channel``, ``channel_ended``; channels.py waits briefly for a late event, then asks
  FreeSWITCH with ``uuid_dump``). These refusals never ``uuid_kill``: a stranger must not be able
  to hang up a real caller by naming their channel.
The caller and dialled numbers come from the channel's Event Socket data; the metadata is a hint
(its ``robot`` key and ``rate`` are used; a caller or number that disagrees is logged and counted).

Caller audio that arrives before the metadata (mod_audio_stream sends what it queued during a slow
handshake first) is held, up to ``VP_FS_EARLY_AUDIO_MAX_FRAMES`` frames, and delivered first, in
order. Bad input never takes the gateway down and never leaves a call unrecorded:
- frames that are not whole 20 ms frames (odd sizes, odd byte counts) are re-framed by
  ``FrameAssembler`` and counted; oversized ones are dropped and counted;
- text frames after the metadata are counted and ignored; unusable or missing metadata is counted
  and the call is routed by the channel's dialled number alone;
- a stream of a real channel refused for routing (no robot for the number) is closed with 1008 and
  its channel hung up (``uuid_kill``, cause UNALLOCATED_NUMBER). It never started a call, so it
  has no call record;
- the stream closing while FreeSWITCH has not reported a hangup (a dropped socket, a stream
  stopped mid-sentence): the call ends with reason ``stream_closed`` and the channel is hung up,
  since a caller nobody hears must not be left in a parked call.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import re
from typing import TYPE_CHECKING

import structlog
from prometheus_client import Counter

from voiceplatform import metrics
from voiceplatform.config import RobotConfig
from voiceplatform.gateway import CallSession, FrameAssembler
from voiceplatform.logging import bind_call
from voiceplatform.phone_stream import KEY_PARAM, secret_matches
from voiceplatform.wire import frame_bytes
from vp_gateway_fs.amd_watch import AmdWatch
from vp_gateway_fs.call import PhoneCall
from vp_gateway_fs.channels import LOOKUPS, ChannelFacts
from vp_gateway_fs.esl import EslError
from vp_gateway_fs.routing import NO_METADATA, RoutingError, StreamMeta, parse_metadata
from vp_gateway_fs.sink import FsSink, command_failed
from vp_gateway_fs.stream_socket import TOO_LARGE, Message, StreamClosed, StreamSocket

if TYPE_CHECKING:
    from vp_gateway_fs.app import GatewayFs

log = structlog.get_logger("vp_gateway_fs.stream")
SERVICE = "gateway-fs"
_FRAMES_IN = metrics.FRAMES_IN.labels(SERVICE)  # bound once: the audio path runs 50 times a second per call
BAD_INPUT = Counter("vp_gateway_fs_bad_input_total", "Stream frames rejected or repaired", ["reason"])
REJECTED = Counter("vp_gateway_fs_rejected_total", "Streams refused before a call started", ["reason"])
EARLY_AUDIO = Counter(
    "vp_gateway_fs_early_audio_frames_total", "Caller audio frames that came before the metadata (kept)"
)
MISMATCH = Counter(
    "vp_gateway_fs_metadata_mismatch_total",
    "Stream metadata that disagrees with FreeSWITCH's channel data",
    ["field"],
)
_UUID = re.compile(r"^[A-Za-z0-9-]{8,64}$")
# how long a closed stream waits for FreeSWITCH's CHANNEL_HANGUP_COMPLETE to name the reason
HANGUP_GRACE_S = 0.5


class StreamHandler:
    def __init__(self, gateway: GatewayFs) -> None:
        self.gw = gateway
        self.settings = gateway.settings
        self.secret = gateway.settings.fs_stream_secret.get_secret_value()

    async def handle(self, ws: StreamSocket, path_uuid: str | None) -> None:
        key = ws.query.get(KEY_PARAM)
        if not secret_matches(key, self.secret):
            # not our FreeSWITCH: nothing it names is touched (no uuid_kill of a real caller's channel)
            reason = "no_secret" if not key else "bad_secret"
            await self._reject(ws, "", reason, "stream key missing or wrong", kill=False)
            return
        opening = await self._opening(ws)
        if opening is None:
            return  # closed before saying anything
        meta, early = opening
        uuid = path_uuid or meta.uuid
        if path_uuid and meta.uuid and meta.uuid != path_uuid:
            log.warning("fs.stream_uuid_mismatch", path_uuid=path_uuid)
        if not uuid or not _UUID.match(uuid):
            await self._reject(ws, "", "no_uuid", "the stream names no channel uuid (use /call/${uuid})")
            return
        facts = await self._channel(uuid)
        if facts is None:
            ended = self.gw.channels.ended(uuid)
            reason = "channel_ended" if ended else "unknown_channel"
            message = "the channel has ended" if ended else "FreeSWITCH announced no such channel"
            await self._reject(ws, uuid, reason, message, kill=False)
            return
        if not self.gw.accepting or self.gw.bus is None:
            await self._reject(ws, uuid, "draining", "gateway is not accepting calls", code=1013)
            return
        if uuid in self.gw.calls:
            await self._reject(ws, uuid, "duplicate", "a stream for this channel is already open", kill=False)
            return
        _compare(meta, facts)
        # routing by what FreeSWITCH says; the dialplan's robot choice (channel variable vp_robot, else
        # the metadata's robot key) still counts: the stream proved it comes from our FreeSWITCH
        robot_key = facts.variables.get("vp_robot", "") or meta.robot
        try:
            robot, how = self.gw.router.route(StreamMeta(robot=robot_key, dnis=facts.destination))
        except RoutingError as exc:
            await self._reject(ws, uuid, exc.reason, str(exc), cause="UNALLOCATED_NUMBER")
            return
        rate = meta.rate or self.settings.fs_sample_rate
        await self._run_call(ws, uuid, robot=robot, how=how, facts=facts, rate=rate, early=early)

    async def _opening(self, ws: StreamSocket) -> tuple[StreamMeta, list[bytes]] | None:
        """The metadata and the audio that came before it (held in order, bounded), or None if closed.

        mod_audio_stream sends the metadata when its handshake completes, but audio the channel
        produced meanwhile may go first (one frame per 20 ms of a slow handshake): it is kept.
        """
        early: list[bytes] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.fs_metadata_timeout_s
        while True:
            try:
                data = await asyncio.wait_for(ws.receive(), max(deadline - loop.time(), 0.001))
            except TimeoutError:
                break
            except StreamClosed:
                return None
            if isinstance(data, str):
                if early:
                    EARLY_AUDIO.inc(len(early))
                    log.info("fs.audio_before_metadata", frames=len(early))
                try:
                    return parse_metadata(data), early
                except RoutingError:
                    BAD_INPUT.labels("bad_metadata").inc()
                    log.error("fs.bad_metadata")
                    return NO_METADATA, early
            if data is TOO_LARGE:
                BAD_INPUT.labels("too_large").inc()
                continue
            early.append(data)
            if len(early) >= self.settings.fs_early_audio_max_frames:
                break
        BAD_INPUT.labels("no_metadata").inc()
        return NO_METADATA, early

    async def _channel(self, uuid: str) -> ChannelFacts | None:
        """The live channel ``uuid`` as FreeSWITCH announced it; None when FreeSWITCH has no such channel."""
        registry = self.gw.channels
        facts = await registry.wait(uuid, self.settings.fs_channel_wait_s)
        if facts is not None or registry.ended(uuid):
            return facts
        # never announced: perhaps created while the ESL was down; FreeSWITCH itself decides
        try:
            reply = await self.gw.esl.api(f"uuid_dump {uuid}")
        except EslError:
            facts = None
        else:
            facts = registry.learn_from_dump(uuid, reply.text)
        if facts is None:
            LOOKUPS.labels("unknown").inc()
        return facts

    async def _reject(
        self,
        ws: StreamSocket,
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
        ws: StreamSocket,
        uuid: str,
        *,
        robot: RobotConfig,
        how: str,
        facts: ChannelFacts,
        rate: int,
        early: list[bytes],
    ) -> None:
        gw = self.gw
        assert gw.bus is not None
        call_id = f"phone-{uuid}"
        variables, amd = gw.dialer.call_setup(uuid, facts.variables)
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
            playback=self.settings.fs_playback,
            stop_grace_s=self.settings.fs_playback_stop_grace_s,
        )
        session = CallSession(
            gw.bus,
            robot,
            channel="phone",
            sample_rate=rate,
            sink=sink,
            directory=gw.directory,
            call_id=call_id,
            caller=facts.caller,
            gateway_id=self.settings.instance_id,
            lead_frames=self.settings.fs_lead_frames,
            greeting_audio=gw.greetings.cached(robot, rate),
            variables=variables,
            hold_greeting=amd is not None,  # outbound: the greeting waits for AMD (amd_watch.py)
            clock=sink,  # what the caller heard: FreeSWITCH's PLAYBACK_START/STOP
            outbox=gw.outbox,
            frames_per_message=self.settings.fs_frames_per_message,
            recordings_dir=self.settings.recordings_dir,  # the gateway's stereo WAV of the call
        )
        call = PhoneCall(
            facts=facts,
            uuid=uuid,
            session=session,
            sink=sink,
            bus=gw.bus,
            esl=gw.esl,
            recordings_dir=self.settings.fs_recordings_dir,
            answered_at=gw.answered.pop(uuid, None),
            greeting_capture=capture,
        )
        if amd is not None:
            call.amd = AmdWatch(session, gw.bus, amd, rate, on_result=lambda r: gw.dialer.note_amd(uuid, r))
        holder.append(call)
        gw.calls[uuid] = call
        assembler = FrameAssembler(rate, rate)
        with bind_call(call_id=call.call_id):
            log.info(
                "fs.call_routed", uuid=uuid, robot=robot.name, how=how, rate=rate, pii_dnis=facts.destination
            )
            try:
                await call.start()
                for data in early:  # held while the metadata was awaited: first, in order
                    self._audio(call, assembler, data)
                reason = await self._receive_audio(ws, call, assembler, rate)
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

    async def _receive_audio(
        self, ws: StreamSocket, call: PhoneCall, assembler: FrameAssembler, rate: int
    ) -> str:
        """The caller's frames, handed to the call from the socket's read callback, until the stream
        closes ("stream_closed") or the call ends (its end reason)."""
        frame = frame_bytes(rate)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_message(data: Message) -> bool:
            if call.session.ended:
                if not done.done():
                    done.set_result(None)
                return True
            if isinstance(data, str):
                BAD_INPUT.labels("text_frame").inc()
            elif data is TOO_LARGE:  # the socket measured it against max_message_bytes
                BAD_INPUT.labels("too_large").inc()
            else:
                if len(data) % frame:
                    BAD_INPUT.labels("odd_bytes" if len(data) % 2 else "frame_size").inc()
                try:
                    self._audio(call, assembler, data)
                except Exception as exc:  # the call ends as gateway_error, as it would for a failed await
                    if not done.done():
                        done.set_exception(exc)
                    return True
            return False

        # the socket's read callback runs outside this task: the call's log context goes with it
        context = contextvars.copy_context()
        ws.deliver_to(lambda data: context.run(on_message, data))
        await asyncio.wait((done, ws.finished), return_when=asyncio.FIRST_COMPLETED)
        if done.done():
            done.result()  # re-raise the handler's failure
            return call.session.end_reason
        done.cancel()
        return call.session.end_reason if call.session.ended else "stream_closed"

    @staticmethod
    def _audio(call: PhoneCall, assembler: FrameAssembler, data: bytes) -> None:
        _FRAMES_IN.inc()
        for piece in assembler.push(data):
            if call.amd is not None:
                call.amd.feed(piece)
            call.session.push_audio_nowait(piece)


def _digits(number: str) -> str:
    return "".join(c for c in number if c.isdigit())


def _compare(meta: StreamMeta, facts: ChannelFacts) -> None:
    """The metadata is a hint: where it disagrees with the channel, FreeSWITCH wins and it is logged."""
    pairs = (("caller", meta.caller, facts.caller), ("dnis", meta.dnis, facts.destination))
    for name, claimed, actual in pairs:
        if claimed and _digits(claimed) != _digits(actual):
            MISMATCH.labels(name).inc()
            log.warning("fs.metadata_mismatch", field=name, pii_metadata=claimed, pii_channel=actual)
