"""A local stand-in of the Telegram Bot API (``/bot<token>/<method>``), speaking its wire format.

Started on 127.0.0.1 at a random port inside the test's event loop::

    async with TelegramStandIn(token="123:abc", chats={"-1001"}) as tg:
        reporter = TelegramReporter("123:abc", "-1001", api_url=tg.api_url)
        ...
        tg.requests  # every request, parsed

Replies like the real API: ``{"ok": true, "result": <Message>}`` or ``{"ok": false, "error_code": N,
"description": "..."}`` (429 adds ``parameters.retry_after``). A wrong token gets 401, an unknown
chat 400 ``chat not found``, a text over 4096 or a caption over 1024 (counted in UTF-16 code units)
400. Failures can be queued with :meth:`TelegramStandIn.fail_next`. Multipart bodies are parsed with
the standard library (python-multipart, which Starlette forms need, is not installed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message as EmailMessage
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.stand_ins.uvicorn_app import UvicornStandIn

MESSAGE_LIMIT = 4096
CAPTION_LIMIT = 1024


@dataclass
class UploadedFile:
    filename: str
    content_type: str
    content: bytes


@dataclass
class TelegramRequest:
    method: str
    token: str
    content_type: str
    fields: dict[str, Any]  # JSON body, or the form's text fields
    files: dict[str, UploadedFile]
    status: int = 0  # what the stand-in answered


@dataclass
class Failure:
    status: int
    description: str
    retry_after: int | None = None
    method: str | None = None  # None: any method


@dataclass
class _State:
    requests: list[TelegramRequest] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    next_message_id: int = 1


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, Any], dict[str, UploadedFile]]:
    """Text fields and file parts of a ``multipart/form-data`` body."""
    envelope = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode() + body
    parsed = message_from_bytes(envelope)
    if not parsed.is_multipart():
        raise ValueError("not a multipart body")
    fields: dict[str, Any] = {}
    files: dict[str, UploadedFile] = {}
    payload_parts = parsed.get_payload()
    for part in payload_parts if isinstance(payload_parts, list) else []:
        if not isinstance(part, EmailMessage):
            continue
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        content = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            files[name] = UploadedFile(filename, part.get_content_type(), content)
        else:
            fields[name] = content.decode(part.get_content_charset() or "utf-8")
    return fields, files


class TelegramStandIn(UvicornStandIn):
    def __init__(
        self, token: str = "123456:TEST-token_abcdefghij", chats: Iterable[str] = ("-1001",)
    ) -> None:
        self.token = token
        self.chats = {str(c) for c in chats}
        self._state = _State()
        app = Starlette(routes=[Route("/bot{token}/{method}", self._handle, methods=["GET", "POST"])])
        super().__init__(app)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[TelegramRequest]:
        return self._state.requests

    def calls(self, method: str, ok_only: bool = True) -> list[TelegramRequest]:
        return [r for r in self.requests if r.method == method and (r.status == 200 or not ok_only)]

    def fail_next(
        self, status: int, description: str = "", retry_after: int | None = None, method: str | None = None
    ) -> None:
        """The next request (of ``method``, or any) fails with ``status``; queue several for more."""
        default = {
            400: "Bad Request: chat not found",
            401: "Unauthorized",
            403: "Forbidden: bot was blocked by the user",
            429: f"Too Many Requests: retry after {retry_after or 1}",
            500: "Internal Server Error",
            502: "Bad Gateway",
        }
        text = description or default.get(status, f"Error {status}")
        self._state.failures.append(Failure(status, text, retry_after, method))

    async def _handle(self, request: Request) -> JSONResponse:
        token = request.path_params["token"]
        method = request.path_params["method"]
        content_type = request.headers.get("content-type", "")
        body = await request.body()
        fields: dict[str, Any] = {}
        files: dict[str, UploadedFile] = {}
        try:
            if content_type.startswith("application/json"):
                fields = json.loads(body or b"{}")
            elif content_type.startswith("multipart/form-data"):
                fields, files = parse_multipart(content_type, body)
            elif content_type.startswith("application/x-www-form-urlencoded"):
                fields = dict(parse_qsl(body.decode()))
            else:
                fields = dict(request.query_params)
        except ValueError:
            return self._reply(TelegramRequest(method, token, content_type, {}, {}), 400, "Bad Request")
        recorded = TelegramRequest(method, token, content_type, fields, files)
        self._state.requests.append(recorded)
        if token != self.token:
            return self._reply(recorded, 401, "Unauthorized")
        failure = self._take_failure(method)
        if failure is not None:
            params = {"retry_after": failure.retry_after} if failure.retry_after is not None else None
            return self._reply(recorded, failure.status, failure.description, params)
        if method == "sendMessage":
            return self._send_message(recorded)
        if method == "sendDocument":
            return self._send_document(recorded)
        return self._reply(recorded, 404, "Not Found")

    def _take_failure(self, method: str) -> Failure | None:
        for i, failure in enumerate(self._state.failures):
            if failure.method in (None, method):
                return self._state.failures.pop(i)
        return None

    def _chat(self, recorded: TelegramRequest) -> dict[str, Any] | None:
        chat_id = str(recorded.fields.get("chat_id", ""))
        if chat_id not in self.chats:
            return None
        return {"id": int(chat_id) if chat_id.lstrip("-").isdigit() else chat_id, "type": "supergroup"}

    def _send_message(self, recorded: TelegramRequest) -> JSONResponse:
        chat = self._chat(recorded)
        if chat is None:
            return self._reply(recorded, 400, "Bad Request: chat not found")
        text = recorded.fields.get("text")
        if not isinstance(text, str) or not text.strip():
            return self._reply(recorded, 400, "Bad Request: message text is empty")
        if utf16_len(text) > MESSAGE_LIMIT:
            return self._reply(recorded, 400, "Bad Request: message is too long")
        return self._ok(recorded, {**self._message(chat), "text": text})

    def _send_document(self, recorded: TelegramRequest) -> JSONResponse:
        chat = self._chat(recorded)
        if chat is None:
            return self._reply(recorded, 400, "Bad Request: chat not found")
        document = recorded.files.get("document")
        if document is None:
            return self._reply(recorded, 400, "Bad Request: there is no document in the request")
        caption = str(recorded.fields.get("caption", ""))
        if utf16_len(caption) > CAPTION_LIMIT:
            return self._reply(recorded, 400, "Bad Request: message caption is too long")
        n = len(self.requests)
        result = {
            **self._message(chat),
            "document": {
                "file_id": f"BQACAgIAAxkBAAI{n:08d}",
                "file_unique_id": f"AgAD{n:08d}",
                "file_name": document.filename,
                "mime_type": document.content_type,
                "file_size": len(document.content),
            },
        }
        if caption:
            result["caption"] = caption
        return self._ok(recorded, result)

    def _message(self, chat: dict[str, Any]) -> dict[str, Any]:
        message_id = self._state.next_message_id
        self._state.next_message_id += 1
        return {"message_id": message_id, "date": int(time.time()), "chat": chat}

    @staticmethod
    def _ok(recorded: TelegramRequest, result: dict[str, Any]) -> JSONResponse:
        recorded.status = 200
        return JSONResponse({"ok": True, "result": result})

    @staticmethod
    def _reply(
        recorded: TelegramRequest, status: int, description: str, parameters: dict[str, Any] | None = None
    ) -> JSONResponse:
        recorded.status = status
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if parameters:
            body["parameters"] = parameters
        return JSONResponse(body, status_code=status)
