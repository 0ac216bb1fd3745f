"""One inbound Event Socket connection, as mod_event_socket's ``listener_run``/``parse_command`` do it.

Replies and their order follow the FreeSWITCH source: commands are prefix-matched in FreeSWITCH's
order, anything before ``auth`` answers ``-ERR command not found``, a bad password or ``exit`` gets
its reply, then a ``text/disconnect-notice``, then the socket closes. Events fired while a command
runs are held and written after that command's reply, as the listener thread does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid as uuidlib
from collections.abc import Coroutine
from typing import Any, NamedTuple, Protocol

import structlog

from voiceplatform_devstack.freeswitch_events import Subscription
from voiceplatform_devstack.freeswitch_wire import (
    EslPacket,
    FsEvent,
    api_response,
    command_reply,
    disconnect_notice,
    event_type,
    frame_event,
    names,
    read_packet,
    strip_cr,
)

log = structlog.get_logger("voiceplatform_devstack.freeswitch")

AUTH_TIMEOUT_S = 25.0  # read_packet(listener, &event, 25) while not authenticated
GOODBYE = "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
MYEVENTS = names(
    """CHANNEL_ANSWER CHANNEL_APPLICATION CHANNEL_BRIDGE CHANNEL_CREATE CHANNEL_DATA CHANNEL_DESTROY
    CHANNEL_EXECUTE CHANNEL_EXECUTE_COMPLETE CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE CHANNEL_ORIGINATE
    CHANNEL_UUID CHANNEL_OUTGOING CHANNEL_PARK CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA CHANNEL_STATE
    CHANNEL_UNBRIDGE CHANNEL_UNPARK DETECTED_SPEECH DTMF NOTALK TALK"""
)
LOG_LEVELS = {"console": 0, "alert": 1, "crit": 2, "err": 3, "error": 3, "warning": 4, "notice": 5}
LOG_LEVELS |= {"info": 6, "debug": 7}


class _Command(NamedTuple):
    ts: float
    line: str
    headers: dict[str, str]


class EslCommand(_Command):
    """A command as received: ``(ts, line, headers)`` (monotonic time, first line, header lines).

    ``body`` holds what a ``Content-Length`` header announced, if anything.
    """

    body: str | None = None


class EslBackend(Protocol):
    def password_ok(self, password: str) -> bool: ...
    def record_command(self, command: EslCommand) -> None: ...
    def override(self, verb: str) -> str | None: ...
    async def api(self, command: str, arg: str | None) -> str | None: ...
    def sendmsg(self, uuid: str, packet: EslPacket) -> bool: ...
    def channel_exists(self, uuid: str) -> bool: ...
    def make_event(
        self, name: str, headers: list[tuple[str, str]], body: str | None = None, subclass: str | None = None
    ) -> FsEvent: ...
    def fire(self, event: FsEvent) -> None: ...
    def spawn(self, coro: Coroutine[Any, Any, Any], key: str) -> asyncio.Task[Any]: ...


class EslListener:
    def __init__(
        self, backend: EslBackend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.backend = backend
        self.reader, self.writer = reader, writer
        self.key = f"esl-{uuidlib.uuid4().hex[:8]}"
        self.authed = False
        self.running = True
        self.sub = Subscription()
        self.linger: float | None = None  # seconds; -1 forever; None: no linger
        self.logging = False
        self._busy = False
        self._held: list[bytes] = []
        self._dropped = False

    # ---- I/O ------------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def deliver(self, event: FsEvent) -> None:
        if not self.sub.wants(event):
            return
        data = frame_event(event, self.sub.format)
        if self._busy:
            self._held.append(data)
        else:
            self._write(data)

    def drop(self) -> None:
        """Close abruptly, no notice (FreeSWITCH restarting, network gone)."""
        self._dropped = True
        self.running = False
        self.writer.transport.abort()

    def kill(self, message: str) -> None:
        """``kill_listener``: a disconnect notice, then the socket closes."""
        self._write(disconnect_notice(message, self.sub.session_uuid))
        self.running = False
        self.writer.close()

    async def run(self) -> None:
        self._write(b"Content-Type: auth/request\n\n")
        first = True
        try:
            while self.running:
                if first:
                    packet = await asyncio.wait_for(read_packet(self.reader), AUTH_TIMEOUT_S)
                    first = False
                else:
                    packet = await read_packet(self.reader)
                if packet is None:
                    break
                await self._handle(packet)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # auth timeout, reset, EOF mid-body, a line over the read limit: the socket ends
        finally:
            if not self._dropped and not self.writer.is_closing():
                self._write(disconnect_notice(GOODBYE, self.sub.session_uuid))
            with contextlib.suppress(Exception):
                self.writer.close()

    async def _handle(self, packet: EslPacket) -> None:
        command = EslCommand(time.monotonic(), packet.command, dict(packet.headers))
        command.body = packet.body
        self.backend.record_command(command)
        self._busy = True
        try:
            reply = await self._parse(packet)
            if reply:
                self._write(command_reply(reply))
        finally:
            self._busy = False
            held, self._held = self._held, []
            if self.running:  # after exit or a bad password the queue is flushed, not sent
                for data in held:
                    self._write(data)

    def channel_gone(self, uuid: str) -> None:
        """The channel this listener follows with ``myevents`` ended (after its last event)."""
        if self.sub.session_uuid != uuid or not self.running:
            return
        if self.linger is None:
            self.kill(GOODBYE)
            return
        self._write(
            (
                f"Content-Type: text/disconnect-notice\nControlled-Session-UUID: {uuid}\n"
                f"Content-Disposition: linger\nChannel-Name: {uuid}\nLinger-Time: {int(self.linger)}\n"
                "Content-Length: 0\n\n"
            ).encode()
        )
        if self.linger >= 0:
            self.backend.spawn(self._linger_close(self.linger), self.key)

    async def _linger_close(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if self.running:
            self.kill(GOODBYE)

    # ---- commands -------------------------------------------------------------------------------
    async def _parse(self, packet: EslPacket) -> str | None:
        cmd = packet.command
        low = cmd.lower()
        if low.startswith("exit") or cmd.startswith("..."):
            self.running = False
            return "+OK bye"
        if not self.authed:
            if low.startswith("auth "):
                if self.backend.password_ok(cmd[5:]):
                    self.authed = True
                    return "+OK accepted"
                self.running = False
                return "-ERR invalid"
            if low.startswith("userauth "):  # the peer has no directory users
                self.running = False
                return "-ERR invalid"
            return "-ERR command not found"
        verb = low.split(" ", 1)[0]
        if verb not in ("api", "bgapi"):
            forced = self.backend.override(verb)
            if forced is not None:
                return forced
        if low.startswith("filter "):
            return self.sub.filter(cmd[7:])
        if low.startswith("myevents") and (self.sub.session_uuid is not None or low.startswith("myevents ")):
            return self._myevents(cmd)
        if low.startswith("divert_events"):
            if self.sub.session_uuid is None:
                return "-ERR not controlling a session."
            value = cmd[13:].strip(" ")
            if not value:
                return "-ERR missing value."
            return "+OK events diverted" if value.lower() == "on" else "+OK events not diverted"
        if low.startswith("sendmsg"):
            return self._sendmsg(cmd[7:], packet)
        if low.startswith("sendevent"):
            return self._sendevent(cmd[9:], packet)
        if low.startswith("api "):
            await self._api(cmd[4:])
            return None
        if low.startswith("bgapi "):
            return self._bgapi(cmd[6:], packet)
        if low.startswith("log"):
            return self._log(cmd)
        if low.startswith("linger"):
            if self.sub.session_uuid is None:
                return "-ERR not controlling a session"
            self.linger = float(_atoi(cmd[7:])) if len(cmd) > 6 and cmd[6] == " " else -1.0
            return "+OK will linger" if self.linger < 0 else f"+OK will linger {int(self.linger)} seconds"
        if low.startswith("nolinger"):
            if self.sub.session_uuid is None:
                return "-ERR not controlling a session"
            self.linger = None
            return "+OK will not linger"
        if low.startswith("nolog"):
            was, self.logging = self.logging, False
            return "+OK no longer logging" if was else "-ERR not loging"
        if low.startswith("event"):
            return self.sub.event(cmd)
        if low.startswith("nixevent"):
            return self.sub.nixevent(cmd)
        if low.startswith("noevents"):
            self._held.clear()
            return self.sub.noevents()
        return "-ERR command not found"

    def _myevents(self, cmd: str) -> str:
        if self.sub.myevents:
            return "-ERR aready enabled."
        uuid, sep, _fmt = cmd[9:].partition(" ")
        if self.backend.channel_exists(uuid):
            self.sub.session_uuid = uuid
        elif sep:
            return "-ERR invalid uuid"
        # (FreeSWITCH's own parsing never applies the format word in inbound mode)
        self.sub.event_list |= MYEVENTS
        self.sub.myevents = True
        self.sub.events_on = True
        return "+OK Events Enabled"

    def _sendmsg(self, rest: str, packet: EslPacket) -> str:
        uuid = rest.lstrip(" ") or packet.get("session-id") or ""
        target = uuid or self.sub.session_uuid or ""
        if target and self.backend.sendmsg(target, packet):
            return "+OK"
        return f"-ERR invalid session id [{uuid}]"

    def _sendevent(self, rest: str, packet: EslPacket) -> str:
        name = event_type(rest.strip(" \t")) or "CUSTOM"
        event_uuid = str(uuidlib.uuid4())
        subclass = packet.get("Event-Subclass") if name == "CUSTOM" else None
        headers = [(k, v) for k, v in packet.headers if k.lower() not in ("content-length", "event-name")]
        headers.append(("Event-UUID", event_uuid))
        event = self.backend.make_event(name, headers, packet.body, subclass)
        self.backend.fire(event)
        return f"+OK {event_uuid}"

    async def _api(self, rest: str) -> None:
        command, sep, arg = strip_cr(rest).partition(" ")
        output = await self.backend.api(command, arg if sep else None)
        if output is None:
            output = f"-ERR {command} Command not found!\n"
        self._write(api_response(output or "-ERR no reply\n"))

    def _bgapi(self, rest: str, packet: EslPacket) -> str:
        command, sep, arg = strip_cr(rest).partition(" ")
        job = (packet.get("job-uuid") or str(uuidlib.uuid4()))[:36]
        self.backend.spawn(self._bg_job(command, arg if sep else None, job), "bgapi")  # outlives the socket
        return f"~Reply-Text: +OK Job-UUID: {job}\nJob-UUID: {job}\n\n"

    async def _bg_job(self, command: str, arg: str | None, job: str) -> None:
        output = await self.backend.api(command, arg)
        if output is None:
            output = f"-ERR {command} Command not found!\n"
        headers = [("Job-UUID", job), ("Job-Command", command)]
        if arg is not None:
            headers.append(("Job-Command-Arg", arg))
        self.backend.fire(self.backend.make_event("BACKGROUND_JOB", headers, output))

    def _log(self, cmd: str) -> str:
        level_s = cmd[3:]
        if level_s:
            level_s = level_s[1:]
        level = 7
        if level_s:
            level = (
                int(level_s)
                if level_s.isdigit() and int(level_s) <= 7
                else LOG_LEVELS.get(level_s.lower(), -1)
            )
        if level < 0:
            return "-ERR invalid log level"
        self.logging = True
        return f"+OK log level {level_s} [{level}]"


def _atoi(text: str) -> int:
    digits = ""
    for ch in text.lstrip():
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else 0
