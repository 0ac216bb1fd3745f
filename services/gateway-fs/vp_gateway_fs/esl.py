"""A small asyncio client for FreeSWITCH's Event Socket, inbound mode (we connect to FS:8021).

Own code, not a library: ``genesis`` (maintained, asyncio) was evaluated; it brings a CLI stack
(typer, rich, watchdog) and OpenTelemetry into the service, its inbound client does not reconnect,
and its ``send`` waits without a timeout on a shared reply queue (one late reply pairs every later
command with the wrong answer). We need little of 9c: header blocks, ``Content-Length`` bodies,
``auth``, ``event plain``, ``api`` and ``text/event-plain`` events with URL-encoded values.

Commands are pipelined: FreeSWITCH answers a connection's commands in order, so futures wait in a
FIFO and each ``command/reply``/``api/response`` resolves the oldest. A timed-out command keeps its
place (its late answer is consumed by it); three timeouts in a row drop the stuck socket.
``submit`` writes at once, so commands go out in call order without a lock. While disconnected,
commands fail at once (``EslUnavailable``); reconnects back off from 0.1 s up to
``reconnect_max_s``. The password is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

import structlog

from vp_gateway_fs.esl_frames import EslEvent, EslReply, parse_event_plain, read_message

log = structlog.get_logger("vp_gateway_fs.esl")
__all__ = ["EslAuthError", "EslClient", "EslError", "EslEvent", "EslReply", "EslTimeout", "EslUnavailable"]

AUTH_TIMEOUT_S = 5.0
MAX_TIMEOUTS_IN_ROW = 3


class EslError(Exception):
    pass


class EslUnavailable(EslError):
    """No authenticated ESL connection right now (FreeSWITCH down, restarting, or refusing us)."""


class EslTimeout(EslError):
    """FreeSWITCH did not answer a command in time."""


class EslAuthError(EslError):
    """FreeSWITCH refused the password."""


def _retrieve(future: asyncio.Future[EslReply]) -> None:
    if not future.cancelled():
        future.exception()


class EslClient:
    def __init__(
        self,
        host: str,
        port: int,
        password: str,
        *,
        subscription: str,
        on_event: Callable[[EslEvent], None],
        on_state: Callable[[bool], None] | None = None,
        command_timeout_s: float = 2.0,
        reconnect_max_s: float = 2.0,
    ) -> None:
        self.host, self.port = host, port
        self._password = password
        self.subscription = subscription
        self.on_event = on_event
        self.on_state = on_state
        self.command_timeout_s = command_timeout_s
        self.reconnect_max_s = reconnect_max_s
        self._writer: asyncio.StreamWriter | None = None
        self._pending: deque[asyncio.Future[EslReply]] = deque()
        self._ready = False
        self._timeouts_in_row = 0
        self.connected_event = asyncio.Event()
        self.connections = 0  # successful logins so far (a reconnect makes it 2, ...)

    @property
    def connected(self) -> bool:
        return self._ready

    # ---- commands ---------------------------------------------------------------------------------
    def submit(self, command: str, *, before_auth: bool = False) -> asyncio.Future[EslReply]:
        """Write one command now; the future resolves with its reply (in FreeSWITCH's order)."""
        if "\n" in command or "\r" in command:
            raise ValueError("an ESL command is one line")
        writer = self._writer
        if writer is None or writer.is_closing() or not (self._ready or before_auth):
            raise EslUnavailable("no ESL connection to FreeSWITCH")
        future: asyncio.Future[EslReply] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)  # a timed-out command's late failure is not an error
        self._pending.append(future)
        writer.write(command.encode("utf-8") + b"\n\n")
        return future

    def submit_sendmsg(self, uuid: str, headers: list[tuple[str, str]]) -> asyncio.Future[EslReply]:
        """``sendmsg <uuid>`` with its header lines (``call-command: execute`` ...); the reply is
        ``+OK`` or ``-ERR invalid session id [<uuid>]``."""
        lines = [f"sendmsg {uuid}", *(f"{name}: {value}" for name, value in headers)]
        if any("\n" in line or "\r" in line or not line.strip() for line in lines):
            raise ValueError("sendmsg header lines must be single, non-empty lines")
        writer = self._writer
        if writer is None or writer.is_closing() or not self._ready:
            raise EslUnavailable("no ESL connection to FreeSWITCH")
        future: asyncio.Future[EslReply] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        self._pending.append(future)
        writer.write("\n".join(lines).encode("utf-8") + b"\n\n")
        return future

    async def wait(self, future: asyncio.Future[EslReply], timeout: float | None = None) -> EslReply:
        """The reply of a submitted command; ``EslTimeout`` when FreeSWITCH is too slow to answer."""
        try:
            reply = await asyncio.wait_for(asyncio.shield(future), timeout or self.command_timeout_s)
        except TimeoutError:
            self._timeouts_in_row += 1
            if self._timeouts_in_row >= MAX_TIMEOUTS_IN_ROW and self._writer is not None:
                log.error("esl.stalled", timeouts=self._timeouts_in_row)
                self._writer.close()
            raise EslTimeout("FreeSWITCH did not answer in time") from None
        self._timeouts_in_row = 0
        return reply

    async def command(
        self, command: str, timeout: float | None = None, *, before_auth: bool = False
    ) -> EslReply:
        return await self.wait(self.submit(command, before_auth=before_auth), timeout)

    async def api(self, command: str, timeout: float | None = None) -> EslReply:
        """``api <command>``: the reply text is the command's output (``+OK ...`` or ``-ERR ...``)."""
        return await self.command(f"api {command}", timeout)

    # ---- connection ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, log in, subscribe, read; reconnect with back-off until cancelled."""
        delay = 0.1
        while True:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), AUTH_TIMEOUT_S
                )
            except (OSError, TimeoutError) as exc:
                log.warning("esl.connect_failed", host=self.host, port=self.port, error=type(exc).__name__)
            else:
                try:
                    await self._session(reader, writer)
                except EslAuthError:
                    log.error("esl.auth_failed", host=self.host, port=self.port)
                    delay = self.reconnect_max_s
                except (EslError, OSError, EOFError, asyncio.IncompleteReadError, TimeoutError) as exc:
                    log.warning("esl.disconnected", error=type(exc).__name__, detail=str(exc)[:120])
                finally:
                    was_ready = self._ready
                    self._close(writer)
                    if was_ready:
                        delay = 0.1
                        if self.on_state is not None:
                            self.on_state(False)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.reconnect_max_s)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        headers, _ = await asyncio.wait_for(read_message(reader), AUTH_TIMEOUT_S)
        if headers.get("Content-Type") != "auth/request":
            raise EslError(f"unexpected greeting {headers.get('Content-Type', '')[:40]!r}")
        self._writer = writer
        reading = asyncio.create_task(self._read_loop(reader), name="esl-reader")
        try:
            reply = await self.command(f"auth {self._password}", AUTH_TIMEOUT_S, before_auth=True)
            if not reply.text.startswith("+OK"):
                raise EslAuthError("FreeSWITCH refused the ESL password")
            reply = await self.command(f"event plain {self.subscription}", AUTH_TIMEOUT_S, before_auth=True)
            if not reply.ok:
                raise EslError(f"event subscription refused: {reply.text[:80]}")
            self._ready = True
            self.connections += 1
            self.connected_event.set()
            log.info("esl.connected", host=self.host, port=self.port, connections=self.connections)
            if self.on_state is not None:
                self.on_state(True)
            await reading
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                headers, body = await read_message(reader)
                kind = headers.get("Content-Type", "")
                if kind == "command/reply":
                    self._resolve(headers.get("Reply-Text", ""))
                elif kind == "api/response":
                    self._resolve(body.decode("utf-8", "replace"))
                elif kind == "text/event-plain":
                    try:
                        self.on_event(parse_event_plain(body))
                    except Exception:
                        log.exception("esl.event_handler_failed")
                elif kind == "text/disconnect-notice":
                    log.warning("esl.disconnect_notice")
                    return
        finally:
            self._fail_pending()

    def _resolve(self, text: str) -> None:
        if self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_result(EslReply(text.strip()))

    def _fail_pending(self) -> None:
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(EslUnavailable("ESL connection lost"))

    def _close(self, writer: asyncio.StreamWriter) -> None:
        self._ready = False
        self.connected_event.clear()
        self._writer = None
        writer.close()
        self._fail_pending()
