"""A FreeSWITCH stand-in faithful to the wire: Event Socket (inbound) + mod_audio_stream + channels.

What gateway-fs, ``vp call --phone`` and the benchmarks use instead of a real FreeSWITCH (Debian has
no package). It listens for ESL connections like mod_event_socket (the gateway connects to it),
and ``place_call`` makes a call arrive as the dialplan (docs/protocols/freeswitch.md) would: the channel is
created, answered, and ``api_on_answer`` opens the mod_audio_stream WebSocket to the gateway.

    peer = FreeSwitchPeer(esl_password="ClueCon")
    await peer.start()                                  # peer.esl_port is the bound port
    call = await peer.place_call("ws://127.0.0.1:8080/call", destination="7000")
    await call.stream_pcm(pcm_8k)                       # real-time 20 ms frames
    await call.hangup()

Strict on purpose: replies, framing and event serialization are FreeSWITCH's byte for byte (see
``freeswitch_wire``), so a gateway that works against the peer parses the real thing. Knobs for
failure tests: ``fail_next`` (the next use of an API command answers a given reply),
``reject_password``, ``drop_esl`` (every ESL socket cut, as when FreeSWITCH restarts),
``PeerCall.close_stream_abruptly`` / ``send_ws_text`` / ``send_ws_bytes``.

Two races of the real thing it models on demand:
- audio before metadata: mod_audio_stream sends the caller audio it queued during a slow WebSocket
  handshake before its metadata text frame (a handshake answered 20 ms late put one frame first,
  100 ms five). ``early_audio_frames`` (peer-wide, or ``place_call(early_frames=N)``): the stream
  sends that many audio frames, then the metadata.
- stream before event: FreeSWITCH delivers events to Event Socket listeners from its own queue,
  so under load a stream can reach the gateway before the channel's CHANNEL_CREATE does.
  ``event_delay_s`` delays every event's delivery (in order) by that long; ``flush_events``
  delivers what is held at once.

Playback timing as a real FreeSWITCH plays files (``freeswitch_player``, which also lists what is
not modelled): every ``uuid_broadcast`` reads 5 lead frames (100 ms) before its file, files queued
with ``sendmsg`` + ``execute playback`` follow each other 1.5 ms apart in real time, and a file that
cannot be opened (``PeerCall.player.fail_open``) fires no PLAYBACK_START/STOP, only
CHANNEL_EXECUTE_COMPLETE with ``FILE NOT FOUND``.

Outbound: ``peer.outbound`` answers ``originate`` with a scripted callee per number (answer after a
ring time, busy, no answer; a human's hello, a voicemail greeting, an IVR prompt): see
``freeswitch_outbound``.

The stream URL is whatever the caller of ``place_call`` gives: the dialplan's
``<base>/<uuid>?key=<secret>`` (``voiceplatform.phone_stream.stream_url``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import tempfile
import time
import uuid as uuidlib
from collections import deque
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog

from voiceplatform.runtime.tasks import TaskRegistry
from voiceplatform_devstack.freeswitch_api import COMMANDS
from voiceplatform_devstack.freeswitch_call import PeerCall
from voiceplatform_devstack.freeswitch_esl import EslCommand, EslListener
from voiceplatform_devstack.freeswitch_outbound import Outbound
from voiceplatform_devstack.freeswitch_wire import EslPacket, FsEvent, standard_headers

log = structlog.get_logger("voiceplatform_devstack.freeswitch")

ESL_READ_LIMIT = 16 * 1024 * 1024
SHUTDOWN_NOTICE = "The system is being shut down.\n"
# Event-Calling-File/Function/Line-Number as the real events carry them
CALLING: dict[str, tuple[str, str, int]] = {
    "CHANNEL_CREATE": ("switch_core_state_machine.c", "switch_core_session_run", 627),
    "CHANNEL_ANSWER": ("switch_channel.c", "switch_channel_perform_mark_answered", 3978),
    "CHANNEL_PARK": ("switch_ivr.c", "switch_ivr_park", 1006),
    "CHANNEL_HANGUP": ("switch_channel.c", "switch_channel_perform_hangup", 3495),
    "CHANNEL_HANGUP_COMPLETE": ("switch_core_state_machine.c", "switch_core_session_reporting_state", 952),
    "CHANNEL_DESTROY": ("switch_core_session.c", "switch_core_session_perform_destroy", 1741),
    "CHANNEL_EXECUTE": ("switch_core_session.c", "switch_core_session_exec", 2939),
    "CHANNEL_EXECUTE_COMPLETE": ("switch_core_session.c", "switch_core_session_exec", 2978),
    "PLAYBACK_START": ("switch_ivr_play_say.c", "switch_ivr_play_file", 1511),
    "PLAYBACK_STOP": ("switch_ivr_play_say.c", "switch_ivr_play_file", 2049),
    "RECORD_START": ("switch_ivr_async.c", "record_callback", 1322),
    "RECORD_STOP": ("switch_ivr_async.c", "record_callback", 1416),
    "DTMF": ("switch_channel.c", "switch_channel_dequeue_dtmf", 640),
    "BACKGROUND_JOB": ("mod_event_socket.c", "api_exec", 1570),
    "CUSTOM": ("mod_audio_stream.c", "responseHandler", 20),
}


class FreeSwitchPeer:
    def __init__(
        self,
        *,
        esl_password: str,
        host: str = "127.0.0.1",
        esl_port: int = 0,
        temp_dir: Path | None = None,
        record_stereo: bool = False,
        history: int = 20000,
    ) -> None:
        self.esl_password = esl_password
        self.host = host
        self.esl_port = esl_port
        self._own_temp = temp_dir is None
        self.temp_dir = Path(temp_dir) if temp_dir else Path(tempfile.mkdtemp(prefix="vp-fs-peer-"))
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.record_stereo = record_stereo  # uuid_record: caller left, robot right (else mixed mono)
        self.reject_password = False
        self.early_audio_frames = 0  # audio frames each new stream sends before its metadata
        self.event_delay_s = 0.0  # events reach ESL listeners this much later (in order)
        self._delayed: deque[tuple[float, FsEvent]] = deque()
        self._delivering: asyncio.Task[Any] | None = None
        self.commands: list[EslCommand] = []
        # recent events, for assertions; a load generator keeps few (a big history slows every GC)
        self.fired: deque[FsEvent] = deque(maxlen=history)
        self.calls: dict[str, PeerCall] = {}  # live channels by uuid
        self.all_calls: list[PeerCall] = []
        self.listeners: set[EslListener] = set()
        self.core_uuid = str(uuidlib.uuid4())
        self.hostname = "vp-fs-peer"
        self.started_at = time.monotonic()
        self.sessions_since_start = 0
        self.connections = 0  # ESL connections accepted so far
        self._sequence = itertools.count(1)
        self._overrides: dict[str, deque[str]] = {}
        self._tasks = TaskRegistry()
        self._server: asyncio.Server | None = None
        self.outbound = Outbound(self)  # `originate` and its scripted callees (freeswitch_outbound)

    async def __aenter__(self) -> FreeSwitchPeer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ---- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connection, self.host, self.esl_port, limit=ESL_READ_LIMIT
        )
        self.esl_port = self._server.sockets[0].getsockname()[1]
        log.debug("fs_peer.started", esl_port=self.esl_port)

    async def stop(self) -> None:
        """FreeSWITCH shutting down: calls end (SYSTEM_SHUTDOWN), ESL sockets get the notice."""
        if self._server is not None:
            self._server.close()
        for call in list(self.calls.values()):
            call.begin_hangup("SYSTEM_SHUTDOWN")
        ended = [asyncio.ensure_future(c.ended.wait()) for c in self.all_calls if not c.ended.is_set()]
        if ended:
            await asyncio.wait(ended, timeout=3.0)
            for waiter in ended:
                waiter.cancel()
        for listener in list(self.listeners):
            listener.kill(SHUTDOWN_NOTICE)
        await self._tasks.cancel_all()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        if self._own_temp:
            with contextlib.suppress(OSError):
                self.temp_dir.rmdir()  # only when empty: what sessions wrote is gone with them

    # ---- what tests drive -----------------------------------------------------------------------
    async def place_call(
        self,
        ws_url: str | None,
        *,
        destination: str,
        caller: str = "79990001122",
        metadata: str | None = None,
        rate: int = 8000,
        uuid: str | None = None,
        answer: bool = True,
        stream_rate: int | None = None,
        mix: str = "mono",
        idle_silence: bool = True,
        early_frames: int | None = None,
    ) -> PeerCall:
        """A call arrives. ``ws_url`` None: the dialplan starts no stream (the gateway may, by API).

        ``rate`` is the channel's rate (the caller's audio and what the caller hears); the stream
        goes out at ``stream_rate`` (default: the same), resampled as mod_audio_stream does.
        ``idle_silence``: between ``stream_pcm`` calls the phone keeps sending silence frames, as a
        real channel does; False leaves the stream quiet instead (cheaper for load tests).
        ``early_frames``: audio frames the stream sends before its metadata (default: the peer's
        ``early_audio_frames``), the handshake race of the real module.
        """
        call = PeerCall(
            self,
            uuid=uuid or str(uuidlib.uuid4()),
            destination=destination,
            caller=caller,
            rate=rate,
            ws_url=ws_url,
            metadata=metadata,
            stream_rate=stream_rate or rate,
            mix_type=mix,
            idle_silence=idle_silence,
            early_frames=self.early_audio_frames if early_frames is None else early_frames,
        )
        self.calls[call.uuid] = call
        self.all_calls.append(call)
        self.sessions_since_start += 1
        call.start()
        if answer:
            await call.answer()
        return call

    def fail_next(self, command: str, reply: str) -> None:
        """The next use of ``command`` (an API command, or an ESL verb like ``sendmsg``) gets ``reply``.

        API output gets a trailing newline when it has none, as FreeSWITCH's command outputs do.
        """
        self._overrides.setdefault(command.lower(), deque()).append(reply)

    async def drop_esl(self) -> None:
        """Cut every ESL connection without a word (FreeSWITCH restarting); calls are untouched."""
        for listener in list(self.listeners):
            listener.drop()
        await asyncio.sleep(0)

    def authenticated_connections(self) -> int:
        return sum(1 for listener in self.listeners if listener.authed and listener.running)

    def events_named(self, name: str, uuid: str | None = None) -> list[FsEvent]:
        """Fired events by Event-Name (or ``CUSTOM`` subclass), optionally for one channel."""
        return [
            e
            for e in self.fired
            if (e.name == name or e.subclass == name) and (uuid is None or e.get("Unique-ID") == uuid)
        ]

    # ---- EslBackend / ChannelHost / ApiHost -----------------------------------------------------
    def password_ok(self, password: str) -> bool:
        return not self.reject_password and password == self.esl_password

    def record_command(self, command: EslCommand) -> None:
        self.commands.append(command)

    def override(self, verb: str) -> str | None:
        queue = self._overrides.get(verb.lower())
        return queue.popleft() if queue else None

    async def api(self, command: str, arg: str | None) -> str | None:
        forced = self.override(command)
        if forced is not None:
            return forced if forced.endswith("\n") else forced + "\n"
        if command == "originate":
            return await self.outbound.originate(arg or "")
        function = COMMANDS.get(command)  # FreeSWITCH's API names are case-sensitive
        if function is None:
            return None
        try:
            return await function(self, arg or "")
        except Exception as exc:  # a peer bug must not take the socket down; it is logged loudly
            log.exception("fs_peer.api_failed", command=command)
            return f"-ERR peer failure {type(exc).__name__}\n"

    def sendmsg(self, uuid: str, packet: EslPacket) -> bool:
        call = self.locate(uuid)
        if call is None:
            return False
        call.sendmsg(packet)
        return True

    def channel_exists(self, uuid: str) -> bool:
        return uuid in self.calls

    def locate(self, uuid: str) -> PeerCall | None:
        return self.calls.get(uuid)

    def live_calls(self) -> list[PeerCall]:
        return list(self.calls.values())

    def make_event(
        self, name: str, headers: list[tuple[str, str]], body: str | None = None, subclass: str | None = None
    ) -> FsEvent:
        calling = CALLING.get(name, ("switch_event.c", "switch_event_fire_detailed", 0))
        all_headers = standard_headers(name, self.core_uuid, next(self._sequence), calling, self.hostname)
        if subclass:
            all_headers.append(("Event-Subclass", subclass))
        return FsEvent(name=name, headers=all_headers + headers, body=body, subclass=subclass)

    def fire(self, event: FsEvent) -> None:
        self.fired.append(event)
        if self.event_delay_s > 0 or self._delayed:
            self._delayed.append((time.monotonic() + self.event_delay_s, event))
            if self._delivering is None or self._delivering.done():
                self._delivering = self._tasks.spawn(self._deliver_delayed(), key="events")
            return
        self._deliver(event)

    def _deliver(self, event: FsEvent) -> None:
        for listener in list(self.listeners):
            listener.deliver(event)

    async def _deliver_delayed(self) -> None:
        while self._delayed:
            due, event = self._delayed[0]
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(min(wait, 0.05))  # re-checked: flush_events may have emptied it
                continue
            self._delayed.popleft()
            self._deliver(event)

    def flush_events(self) -> None:
        """Deliver every delayed event now, in order; later events go out at once again."""
        self.event_delay_s = 0.0
        while self._delayed:
            self._deliver(self._delayed.popleft()[1])

    def spawn(self, coro: Coroutine[Any, Any, Any], key: str) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro, key=key)

    def channel_ended(self, call: PeerCall) -> None:
        self.calls.pop(call.uuid, None)
        for listener in list(self.listeners):
            listener.channel_gone(call.uuid)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        listener = EslListener(self, reader, writer)
        self.listeners.add(listener)
        self.connections += 1
        try:
            await listener.run()
        finally:
            self.listeners.discard(listener)
            await self._tasks.cancel(listener.key)
