"""A WebSocket stand-in for the Realtime speech-to-speech protocol (docs/protocols/openai-realtime.md).

Flavors: ``"yandex"`` (``/v1/realtime/openai?model=gpt://<folder>/speech-realtime-250923``,
``Authorization: api-key <key>``, scheme case-insensitive; echoes ``"rate": null`` in session formats;
names the item event ``conversation.item.created``) and ``"openai"`` (``/v1/realtime?model=<model>``,
``Authorization: Bearer <key>``, GA names, ``session.type`` required). A refused upgrade answers 404
(path), 400 (model), 401 (key), 403 / 429 / ``http_status`` (knobs) with a JSON body.

Per connection: ``session.created``; ``session.update`` validated strictly (realtime_vad.py) →
``session.updated`` or an ``error`` event; ``input_audio_buffer.append`` decoded strictly and fed to an
energy VAD → ``speech_started`` / ``speech_stopped`` / ``committed`` / item event / transcription
(after ``transcript_delay_s``) / an automatic response: ``response.created``, ``output_item.added``, the
item event, ``content_part.added``, transcript and audio deltas (a tone, ``reply_audio_s`` per reply in
``chunk_ms`` chunks, one every ``pace`` × chunk duration), ``output_audio.done``,
``output_audio_transcript.done``, ``content_part.done``, ``output_item.done``, ``response.done`` with
usage. Barge-in (``interrupt_response``) and ``response.cancel`` end a response with ``response.done``
status ``cancelled``; ``conversation.item.truncate`` is checked against the audio already sent.

Transcription: OpenAI sends ``input_audio_transcription.completed`` only when
``audio.input.transcription`` is configured; the Yandex sample gets it without asking. The stand-in does
the same unless ``always_transcribe`` says otherwise. Error codes for truncate / cancel / commit follow
OpenAI where known; their Yandex equivalents are [U] (docs/protocols/openai-realtime.md).

Knobs (``Knobs`` in realtime_vad.py) are keyword arguments and stay mutable (``server.knobs.pace = 0``).
``close_mid_audio`` fires once per server, so a client that reconnects gets a normal session. For
assertions: ``received(type)`` (client events with arrival time), ``sent(type)``, ``sessions`` (per
connection: ``events``, ``audio_in``, ``config``, ``closed``), ``handshakes``, ``truncations``,
``cancels``, ``closed`` (set when a client closes or drops its socket, ``.at`` its time),
``audio_received(i)``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http
import itertools
import json
import time
from typing import Any, Literal, Self
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.stand_ins.realtime_vad import (
    KNOWN_CLIENT_EVENTS,
    Cancel,
    ClientEvent,
    EnergyVad,
    Handshake,
    Knobs,
    PendingResponse,
    SessionError,
    SessionItem,
    StampedEvent,
    Truncation,
    decode_pcm,
    default_session,
    echo_session,
    item_body,
    new_id,
    output_content,
    refusal,
    refusal_body,
    reply_pcm,
    response_body,
    text_deltas,
    truncate_problem,
    usage,
    validate_session,
)

VALID_KEY = "rt-test-secret-5e5e5e"


class Session:
    """One connection: its config, VAD, items, the running response and what it received."""

    def __init__(self, server: RealtimeStandIn, ws: ServerConnection, model: str) -> None:
        self.server, self.ws, self.knobs, self.flavor = server, ws, server.knobs, server.flavor
        self.id = new_id("sess")
        self.config = default_session(self.flavor, self.id, model)
        td = self.config["audio"]["input"]["turn_detection"]
        self.vad = EnergyVad(self.knobs.vad_rms, td["silence_duration_ms"], td["prefix_padding_ms"])
        self.events: list[ClientEvent] = []
        self.sent: list[dict[str, Any]] = []
        self.audio_in = bytearray()
        self.pending_bytes = 0  # input buffer not yet committed
        self.committed_bytes = 0  # input audio in the conversation: what a response is billed for
        self.items: dict[str, SessionItem] = {}
        self.last_item_id: str | None = None
        self.speech_item_id: str | None = None
        self.active: PendingResponse | None = None
        self.audio_started = False
        self.closed = StampedEvent()
        self.server_closed = False
        self.client_event_id: str | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.item_event = (
            "conversation.item.created" if self.flavor == "yandex" else "conversation.item.added"
        )

    def received(self, type_: str | None = None) -> list[ClientEvent]:
        return [e for e in self.events if type_ is None or e.type == type_]

    async def emit(self, type_: str, **fields: Any) -> None:
        event = {"type": type_, "event_id": new_id("event"), **fields}
        self.sent.append(event)
        await self.ws.send(json.dumps(event, ensure_ascii=False))

    async def error(
        self, code: str | None, message: str, *, param: str | None = None, kind: str = ""
    ) -> None:
        error = {"type": kind or "invalid_request_error", "code": code, "message": message, "param": param}
        await self.emit("error", error={**error, "event_id": self.client_event_id})

    async def close(self, code: int) -> None:
        self.server_closed = True
        if code == 1006:
            self.ws.transport.abort()
        else:
            await self.ws.close(code)

    async def run(self) -> None:
        await self.emit("session.created", session=echo_session(self.flavor, self.config))
        if self.knobs.malformed:
            await self.ws.send('{"type": "session.updated", "session": ')
        async for raw in self.ws:
            self.client_event_id = None
            try:
                event = json.loads(raw)
                type_ = event["type"] if isinstance(event, dict) else None
            except (json.JSONDecodeError, KeyError, TypeError):
                event, type_ = {"raw": raw}, None
            self.events.append(ClientEvent(self.id, str(type_ or "<invalid>"), event, time.monotonic()))
            if self.knobs.stall:  # record the caller's audio, answer nothing
                self.audio_in += (
                    type_ == "input_audio_buffer.append" and decode_pcm(event.get("audio"))
                ) or b""
                continue
            if not isinstance(type_, str):
                await self.error("invalid_json", "The client event is not a JSON object with a 'type'.")
                continue
            self.client_event_id = event.get("event_id")
            if type_ not in KNOWN_CLIENT_EVENTS:
                await self.error("invalid_value", f"Invalid value: '{type_}'.", param="type")
                continue
            await self.dispatch(type_, event)

    async def dispatch(self, type_: str, event: dict[str, Any]) -> None:
        if type_ == "session.update":
            await self.on_session_update(event.get("session"))
        elif type_ == "input_audio_buffer.append":
            await self.on_append(event.get("audio"))
        elif type_ == "input_audio_buffer.commit":
            if self.pending_bytes < 24000 * 2 // 10:  # OpenAI wants at least 100 ms
                await self.error("input_audio_buffer_commit_empty", "Buffer too small: expected >= 100ms.")
            else:
                await self.commit(new_id("item"), auto=False)
        elif type_ == "input_audio_buffer.clear":
            self.pending_bytes, self.speech_item_id = 0, None
            self.vad.reset_turn()
            await self.emit("input_audio_buffer.cleared")
        elif type_ == "conversation.item.create":
            item = dict(event.get("item") or {})
            item.setdefault("id", new_id("item"))
            self.items[item["id"]] = SessionItem(item["id"], str(item.get("role", item.get("type", ""))))
            await self.emit(self.item_event, previous_item_id=self.last_item_id, item=item)
            self.last_item_id = item["id"]
        elif type_ == "conversation.item.truncate":
            await self.on_truncate(event)
        elif type_ == "response.create":
            if self.active is not None:
                await self.error("conversation_already_has_active_response", "A response is in progress.")
            else:
                await self.start_response()
        elif type_ == "response.cancel":
            wanted = event.get("response_id")
            if self.active is None or (wanted is not None and wanted != self.active.id):
                await self.error(
                    "response_cancel_not_active", "Cancellation failed: no active response found."
                )
            else:
                await self.cancel("client_cancelled")

    async def on_session_update(self, update: Any) -> None:
        try:
            self.config = validate_session(self.flavor, self.config, update, self.audio_started)
        except SessionError as exc:
            await self.error(exc.code, exc.message, param=exc.param)
            return
        td = self.config["audio"]["input"]["turn_detection"]
        if td is not None:
            rms = self.knobs.vad_rms * td["threshold"] / 0.5
            self.vad.configure(rms, td["silence_duration_ms"], td["prefix_padding_ms"])
        await self.emit("session.updated", session=echo_session(self.flavor, self.config))

    async def on_append(self, audio: Any) -> None:
        pcm = decode_pcm(audio)
        if pcm is None:
            await self.error(
                "invalid_value", "audio must be base64 PCM16 LE (an even byte count)", param="audio"
            )
            return
        self.audio_in += pcm
        self.pending_bytes += len(pcm)
        td = self.config["audio"]["input"]["turn_detection"]
        if td is None:
            return
        for vad_event in self.vad.feed(pcm):
            if vad_event.kind == "started":
                self.speech_item_id = new_id("item")
                started = {"audio_start_ms": vad_event.ms, "item_id": self.speech_item_id}
                if self.active is not None and td["interrupt_response"]:  # barge-in
                    await self.cancel(
                        "turn_detected", announce=("input_audio_buffer.speech_started", started)
                    )
                else:
                    await self.emit("input_audio_buffer.speech_started", **started)
            elif self.speech_item_id is not None:
                item_id, self.speech_item_id = self.speech_item_id, None
                await self.emit(
                    "input_audio_buffer.speech_stopped", audio_end_ms=vad_event.ms, item_id=item_id
                )
                await self.commit(item_id, auto=td["create_response"])

    async def commit(self, item_id: str, *, auto: bool) -> None:
        self.committed_bytes += self.pending_bytes
        previous, self.last_item_id, self.pending_bytes = self.last_item_id, item_id, 0
        self.items[item_id] = SessionItem(item_id, "user")
        await self.emit("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        item = item_body(item_id, "user", "completed", [{"type": "input_audio", "transcript": None}])
        await self.emit(self.item_event, previous_item_id=previous, item=item)
        always = self.knobs.always_transcribe
        if always is None:
            always = self.flavor == "yandex" or bool(self.config["audio"]["input"]["transcription"])
        if always:
            transcript = self.server.next_transcript()
            if self.knobs.transcript_delay_s > 0:
                self.spawn(self.transcribe_later(item_id, transcript))
            else:
                await self.transcribed(item_id, transcript)
        if auto and self.active is None:
            await self.start_response()

    async def transcribed(self, item_id: str, transcript: str) -> None:
        kind = "conversation.item.input_audio_transcription.completed"
        await self.emit(kind, item_id=item_id, content_index=0, transcript=transcript)

    async def transcribe_later(self, item_id: str, transcript: str) -> None:
        await asyncio.sleep(self.knobs.transcript_delay_s)
        await self.transcribed(item_id, transcript)

    def spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def start_response(self) -> None:
        self.active = r = PendingResponse(new_id("resp"), SessionItem(new_id("item"), "assistant"))
        await self.emit("response.created", response=response_body(r.id, "in_progress", []))
        if self.knobs.fail_after_response_created:
            await self.error(None, "The server had an error processing your request.", kind="server_error")
            await self.close(1011)
            return
        r.task = self.spawn(self.respond(r, self.server.next_reply()))

    async def respond(self, r: PendingResponse, text: str) -> None:
        k, rate = self.knobs, self.config["audio"]["output"]["format"]["rate"]
        ids = {"response_id": r.id, "item_id": r.item.id, "output_index": 0, "content_index": 0}
        audio_out = "audio" in self.config["output_modalities"]
        item = item_body(r.item.id, "assistant", "in_progress", [])
        self.items[r.item.id], previous, self.last_item_id = r.item, self.last_item_id, r.item.id
        await self.emit("response.output_item.added", response_id=r.id, output_index=0, item=item)
        await self.emit(self.item_event, previous_item_id=previous, item=item)
        field_name = "transcript" if audio_out else "text"
        await self.emit("response.content_part.added", **ids, part={"type": field_name[:5], field_name: ""})
        step = rate * 2 * k.chunk_ms // 1000
        pcm = reply_pcm(rate, k.reply_audio_s) if audio_out else b""
        chunks = [pcm[i : i + step] for i in range(0, len(pcm), step)] or [b""]
        text_kind = "response.output_audio_transcript.delta" if audio_out else "response.output_text.delta"
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, (chunk, delta) in enumerate(zip(chunks, text_deltas(text, len(chunks)), strict=True)):
            if k.close_mid_audio and i == len(chunks) // 2 and not self.server.closed_mid_audio:
                self.server.closed_mid_audio = True
                await self.close(k.close_code)
                return
            if delta:
                r.transcript += delta
                await self.emit(text_kind, **ids, delta=delta)
            if chunk:
                await self.emit("response.output_audio.delta", **ids, delta=base64.b64encode(chunk).decode())
                self.audio_started = True
                r.item.audio_ms += len(chunk) * 1000 // (2 * rate)
            if k.pace > 0 and i + 1 < len(chunks):
                await asyncio.sleep(max(0.0, start + (i + 1) * k.pace * k.chunk_ms / 1000 - loop.time()))
        self.active = None  # from here on nothing cancels it
        if audio_out:
            await self.emit("response.output_audio.done", **ids)
            await self.emit("response.output_audio_transcript.done", **ids, transcript=r.transcript)
        else:
            await self.emit("response.output_text.done", **ids, text=r.transcript)
        await self.emit("response.content_part.done", **ids, part={"type": field_name[:5], field_name: text})
        done_item = {**item, "status": "completed", "content": [output_content(audio_out, r.transcript)]}
        await self.emit("response.output_item.done", response_id=r.id, output_index=0, item=done_item)
        await self.emit(
            "response.done", response=response_body(r.id, "completed", [done_item], usage=self.usage(r))
        )

    def usage(self, r: PendingResponse) -> dict[str, Any]:
        return usage(self.committed_bytes, self.config["instructions"], r.item.audio_ms, r.transcript)

    async def cancel(
        self, reason: Literal["turn_detected", "client_cancelled"], announce: tuple[str, Any] | None = None
    ) -> None:
        """Stop the deltas, send ``announce`` (speech_started on barge-in), then ``response.done``."""
        r, self.active = self.active, None
        assert r is not None
        if r.task is not None:
            r.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await r.task
        if announce is not None:
            await self.emit(announce[0], **announce[1])
        self.server.cancels.append(Cancel(self.id, r.id, reason, r.item.audio_ms, time.monotonic()))
        output = [item_body(r.item.id, "assistant", "incomplete", [output_content(True, r.transcript)])]
        await self.emit(
            "response.done", response=response_body(r.id, "cancelled", output, reason, self.usage(r))
        )

    async def on_truncate(self, event: dict[str, Any]) -> None:
        item = self.items.get(event.get("item_id"))  # type: ignore[arg-type]
        problem = truncate_problem(event, item.role if item else None, item.audio_ms if item else 0)
        if problem is not None:
            await self.error(problem[0], problem[1], param=problem[2])
            return
        end_ms, index = event["audio_end_ms"], event["content_index"]
        self.server.truncations.append(Truncation(self.id, event["item_id"], index, end_ms, time.monotonic()))
        await self.emit(
            "conversation.item.truncated", item_id=event["item_id"], content_index=0, audio_end_ms=end_ms
        )


class RealtimeStandIn:
    """``async with RealtimeStandIn(flavor="yandex", api_key=...) as server:`` → ``server.url``."""

    def __init__(
        self,
        flavor: Literal["yandex", "openai"] = "yandex",
        api_key: str = VALID_KEY,
        *,
        folder_id: str = "b1gstandin",
        model: str = "gpt-realtime",
        iam_token: str | None = None,  # yandex: also accept ``Authorization: Bearer <IAM token>``
        **knobs: Any,
    ) -> None:
        self.flavor, self.api_key, self.folder_id, self.openai_model = flavor, api_key, folder_id, model
        self.iam_token = iam_token
        self.knobs = Knobs(**knobs)
        self.sessions: list[Session] = []
        self.handshakes: list[Handshake] = []
        self.truncations: list[Truncation] = []
        self.cancels: list[Cancel] = []
        self.closed = StampedEvent()  # a client closed (or dropped) its socket
        self.closed_mid_audio = False
        self._counters = (itertools.count(), itertools.count())
        self._server: Server | None = None
        self._stopping = False
        self.port = 0

    @property
    def path(self) -> str:
        if self.flavor == "yandex":
            return f"/v1/realtime/openai?model=gpt://{self.folder_id}/speech-realtime-250923"
        return f"/v1/realtime?model={self.openai_model}"

    @property
    def base_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base_url + self.path

    def received(self, type_: str | None = None) -> list[ClientEvent]:
        """Client events of every session, in arrival order per session."""
        return [e for s in self.sessions for e in s.received(type_)]

    def sent(self, type_: str) -> list[dict[str, Any]]:
        return [e for s in self.sessions for e in s.sent if e["type"] == type_]

    def audio_received(self, session: int = -1) -> bytes:
        return bytes(self.sessions[session].audio_in)

    def next_transcript(self) -> str:
        return self.knobs.transcripts[next(self._counters[0]) % len(self.knobs.transcripts)]

    def next_reply(self) -> str:
        return self.knobs.replies[next(self._counters[1]) % len(self.knobs.replies)]

    def _check(self, ws: ServerConnection, request: Request) -> Response | None:
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        self.handshakes.append(handshake := Handshake(request.path, headers, 101))
        k = self.knobs
        knob = 403 if k.forbidden else 429 if k.rate_limited else k.http_status
        keys = {"api-key": self.api_key} if self.flavor == "yandex" else {"bearer": self.api_key}
        if self.flavor == "yandex" and self.iam_token:
            keys["bearer"] = self.iam_token
        refused = refusal(self.flavor, keys, request.path, headers.get("authorization", ""), knob)
        if refused is None:
            return None
        handshake.status = status = refused[0]
        body = refusal_body(self.flavor, *refused)
        headers_out = Headers({"Content-Type": "application/json", "Content-Length": str(len(body))})
        return Response(status, http.HTTPStatus(status).phrase, headers_out, body)

    async def _handle(self, ws: ServerConnection) -> None:
        model = dict(parse_qsl(urlsplit(ws.request.path if ws.request else "").query)).get("model", "")
        session = Session(self, ws, model)
        self.sessions.append(session)
        try:
            await session.run()
        except ConnectionClosed:
            pass
        finally:
            for task in list(session.tasks):
                task.cancel()
            await asyncio.gather(*session.tasks, return_exceptions=True)
            session.closed.set()
            if not session.server_closed and not self._stopping:
                self.closed.set()

    async def start(self) -> None:
        self._stopping = False
        self._server = await serve(
            self._handle, "127.0.0.1", 0, process_request=self._check, max_size=16 << 20
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
