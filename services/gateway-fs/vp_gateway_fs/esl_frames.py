"""Event Socket framing (docs/protocols/freeswitch.md): headers, ``Content-Length`` bodies, plain events.

A message is ``Name: value`` lines ended by a blank line, then exactly ``Content-Length`` bytes if
that header is present. A ``text/event-plain`` body is the event's own header block, values
URL-encoded (``mod_audio_stream%3A%3Aplay``), then its own ``Content-Length`` body if it has one.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from urllib.parse import unquote


@dataclass
class EslEvent:
    headers: dict[str, str]
    body: str = ""
    received: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return self.headers.get("Event-Name", "")

    @property
    def subclass(self) -> str:
        return self.headers.get("Event-Subclass", "")

    @property
    def uuid(self) -> str:
        return self.headers.get("Unique-ID") or self.headers.get("Channel-Call-UUID", "")


@dataclass(frozen=True)
class EslReply:
    text: str  # api/response body, or the Reply-Text of a command/reply

    @property
    def ok(self) -> bool:
        return not self.text.lstrip().startswith("-")


def parse_headers(block: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split("\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip()] = value.strip()
    return headers


def parse_event_plain(data: bytes) -> EslEvent:
    """The body of a ``text/event-plain`` message: URL-encoded headers, then maybe a body."""
    text = data.decode("utf-8", "replace")
    head, _, rest = text.partition("\n\n")
    headers = _unquoted(parse_headers(head))
    body = ""
    length = headers.pop("Content-Length", None)
    if length is not None and length.isdigit():
        body = rest.encode("utf-8")[: int(length)].decode("utf-8", "replace")
    return EslEvent(headers, body)


def _unquoted(encoded: dict[str, str]) -> dict[str, str]:
    """The values URL-decoded. An event has dozens of headers (every play of robot audio brings
    one): decoded all at once, a line apart, at half the cost. A line break cannot come from
    decoding unless a value has ``%0A``, and it breaks any UTF-8 sequence, so each value decodes
    as it would alone."""
    values = "\n".join(encoded.values())
    if "%0A" in values or "%0a" in values:
        return {name: unquote(value) for name, value in encoded.items()}
    return dict(zip(encoded, unquote(values).split("\n"), strict=True))


async def read_message(reader: asyncio.StreamReader) -> tuple[dict[str, str], bytes]:
    """One framed message: its header block and its Content-Length body (raises on EOF)."""
    lines: list[str] = []
    while True:
        line = await reader.readuntil(b"\n")
        stripped = line.decode("utf-8", "replace").rstrip("\r\n")
        if not stripped:
            if lines:
                break
            continue  # stray blank lines between messages
        lines.append(stripped)
    headers = parse_headers("\n".join(lines))
    length = headers.get("Content-Length", "0")
    body = await reader.readexactly(int(length)) if length.isdigit() and int(length) > 0 else b""
    return headers, body
