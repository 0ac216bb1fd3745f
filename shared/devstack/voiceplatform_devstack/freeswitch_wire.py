"""FreeSWITCH wire details the peer reproduces byte for byte (docs/protocols/freeswitch.md).

- ``url_encode``: ``switch_url_encode`` (switch_utils.c): bytes outside 0x20..0x7e and the bytes of
  ``SWITCH_URL_UNSAFE`` become ``%XX`` (upper-case hex); an existing ``%XX`` (upper-case hex) is kept.
- ``serialize_plain``: ``switch_event_serialize``: ``Name: value\\n`` per header (empty value:
  ``_undef_``), then ``Content-Length: M\\n\\n<body>`` or a single ``\\n``.
- ``separate_string``: ``switch_separate_string`` with a blank delimiter, as API commands split their
  arguments: runs of spaces separate, single quotes group, backslash escapes, the last slot takes
  the rest of the line.
- ``read_packet``: mod_event_socket's ``read_packet``: a header block ends at two ``\\n`` (``\\r`` in
  between does not count), blank lines before a block are skipped, ``Content-Length`` pulls a body.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

URL_UNSAFE = frozenset(b'\r\n #%&+:;<=>?@[\\]^`{|}"')
HEX_UPPER = b"0123456789ABCDEF"
MAX_PACKET = 10 * 1024 * 1024  # read_packet's max_len


def names(text: str) -> frozenset[str]:
    """A set of FreeSWITCH names written as one whitespace-separated block."""
    return frozenset(text.split())


# switch_event.c EVENT_NAMES (switch_name_event also accepts the "SWITCH_EVENT_" prefix)
EVENT_NAMES = names(
    """CUSTOM CLONE CHANNEL_CREATE CHANNEL_DESTROY CHANNEL_STATE CHANNEL_CALLSTATE CHANNEL_ANSWER
    CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE CHANNEL_EXECUTE CHANNEL_EXECUTE_COMPLETE CHANNEL_HOLD
    CHANNEL_UNHOLD CHANNEL_BRIDGE CHANNEL_UNBRIDGE CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA
    CHANNEL_OUTGOING CHANNEL_PARK CHANNEL_UNPARK CHANNEL_APPLICATION CHANNEL_ORIGINATE CHANNEL_UUID
    API LOG INBOUND_CHAN OUTBOUND_CHAN STARTUP SHUTDOWN PUBLISH UNPUBLISH TALK NOTALK SESSION_CRASH
    MODULE_LOAD MODULE_UNLOAD DTMF MESSAGE PRESENCE_IN NOTIFY_IN PRESENCE_OUT PRESENCE_PROBE
    MESSAGE_WAITING MESSAGE_QUERY ROSTER CODEC BACKGROUND_JOB DETECTED_SPEECH DETECTED_TONE
    PRIVATE_COMMAND HEARTBEAT TRAP ADD_SCHEDULE DEL_SCHEDULE EXE_SCHEDULE RE_SCHEDULE RELOADXML
    NOTIFY PHONE_FEATURE PHONE_FEATURE_SUBSCRIBE SEND_MESSAGE RECV_MESSAGE REQUEST_PARAMS
    CHANNEL_DATA GENERAL COMMAND SESSION_HEARTBEAT CLIENT_DISCONNECTED SERVER_DISCONNECTED SEND_INFO
    RECV_INFO RECV_RTCP_MESSAGE SEND_RTCP_MESSAGE CALL_SECURE NAT RECORD_START RECORD_STOP
    PLAYBACK_START PLAYBACK_STOP CALL_UPDATE FAILURE SOCKET_DATA MEDIA_BUG_START MEDIA_BUG_STOP
    CONFERENCE_DATA_QUERY CONFERENCE_DATA CALL_SETUP_REQ CALL_SETUP_RESULT CALL_DETAIL DEVICE_STATE
    TEXT SHUTDOWN_REQUESTED ALL"""
)


def event_type(name: str) -> str | None:
    """``switch_name_event``: the canonical event name for a keyword, or None."""
    upper = name.upper()
    if len(upper) > 13 and upper[13:] in EVENT_NAMES:
        return upper[13:]
    return upper if upper in EVENT_NAMES else None


def url_encode(value: str) -> str:
    data = value.encode("utf-8")
    out = bytearray()
    last = len(data) - 1
    for i, byte in enumerate(data):
        keep = (
            byte == 0x25 and last - i > 1 and data[i + 1] in HEX_UPPER and data[i + 2] in HEX_UPPER
        )  # an already encoded %XX is not encoded twice
        if not keep and (byte < 0x20 or byte > 0x7E or byte in URL_UNSAFE):
            out += b"%" + HEX_UPPER[byte >> 4 : (byte >> 4) + 1] + HEX_UPPER[byte & 0x0F : (byte & 0x0F) + 1]
        else:
            out.append(byte)
    return out.decode("ascii")


def _cjson_value(value: Any) -> Any:
    """cJSON prints integral doubles without a fraction (8000.0 -> 8000)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return int(value)
    if isinstance(value, dict):
        return {k: _cjson_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cjson_value(v) for v in value]
    return value


def cjson_dumps(value: Any) -> str:
    """``cJSON_PrintUnformatted``: no spaces, keys in insertion order, UTF-8 left as is."""
    return json.dumps(_cjson_value(value), separators=(",", ":"), ensure_ascii=False)


@dataclass
class FsEvent:
    """One fired event: headers in order (names as FreeSWITCH spells them) and an optional body."""

    name: str
    headers: list[tuple[str, str]]
    body: str | None = None
    subclass: str | None = None

    def get(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None


def standard_headers(
    name: str, core_uuid: str, sequence: int, calling: tuple[str, str, int], hostname: str
) -> list[tuple[str, str]]:
    """What ``switch_event_prep_for_delivery_detailed`` adds when an event is created."""
    now_us = time.time_ns() // 1000
    seconds = now_us / 1e6
    return [
        ("Event-Name", name),
        ("Core-UUID", core_uuid),
        ("FreeSWITCH-Hostname", hostname),
        ("FreeSWITCH-Switchname", hostname),
        ("FreeSWITCH-IPv4", "127.0.0.1"),
        ("FreeSWITCH-IPv6", "::1"),
        ("Event-Date-Local", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))),
        ("Event-Date-GMT", formatdate(seconds, usegmt=True)),
        ("Event-Date-Timestamp", str(now_us)),
        ("Event-Calling-File", calling[0]),
        ("Event-Calling-Function", calling[1]),
        ("Event-Calling-Line-Number", str(calling[2])),
        ("Event-Sequence", str(sequence)),
    ]


def serialize_plain(event: FsEvent) -> bytes:
    lines = "".join(f"{name}: {url_encode(value) or '_undef_'}\n" for name, value in event.headers)
    head = lines.encode("utf-8")
    body = (event.body or "").encode("utf-8")
    if body:
        return head + b"Content-Length: %d\n\n" % len(body) + body
    return head + b"\n"


def serialize_json(event: FsEvent) -> bytes:
    parts = [
        f"{json.dumps(k, ensure_ascii=False)}:{json.dumps(v, ensure_ascii=False)}" for k, v in event.headers
    ]
    if event.body is not None:
        size = len(event.body.encode("utf-8"))
        parts.append(f'"Content-Length":"{size}"')
        parts.append(f'"_body":{json.dumps(event.body, ensure_ascii=False)}')
    return ("{" + ",".join(parts) + "}").encode("utf-8")


def serialize_xml(event: FsEvent) -> bytes:
    """``switch_event_xmlize`` + ``switch_xml_toxml`` (values URL-encoded, as FreeSWITCH does)."""
    rows = "".join(f"    <{name}>{url_encode(value)}</{name}>\n" for name, value in event.headers)
    text = f"<event>\n  <headers>\n{rows}  </headers>\n"
    body = event.body or ""
    if body:
        size = len(body.encode("utf-8"))
        escaped = body.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        text += f"  <Content-Length>{size}</Content-Length>\n  <body>{escaped}</body>\n"
    return (text + "</event>").encode("utf-8")


def frame_event(event: FsEvent, fmt: str) -> bytes:
    if fmt == "json":
        payload = serialize_json(event)
    elif fmt == "xml":
        payload = serialize_xml(event)
    else:
        fmt, payload = "plain", serialize_plain(event)
    return b"Content-Length: %d\nContent-Type: text/event-%s\n\n" % (len(payload), fmt.encode()) + payload


def command_reply(text: str) -> bytes:
    """``Content-Type: command/reply``; a reply starting with ``~`` carries its own header lines."""
    if text.startswith("~"):
        return b"Content-Type: command/reply\n" + text[1:].encode("utf-8")
    return b"Content-Type: command/reply\nReply-Text: " + text.encode("utf-8") + b"\n\n"


def api_response(body: str) -> bytes:
    data = body.encode("utf-8")
    return b"Content-Type: api/response\nContent-Length: %d\n\n" % len(data) + data


def disconnect_notice(message: str, session_uuid: str | None = None) -> bytes:
    data = message.encode("utf-8")
    if session_uuid:
        head = (
            f"Content-Type: text/disconnect-notice\nControlled-Session-UUID: {session_uuid}\n"
            f"Content-Disposition: disconnect\nContent-Length: {len(data)}\n\n"
        )
    else:
        head = f"Content-Type: text/disconnect-notice\nContent-Length: {len(data)}\n\n"
    return head.encode("utf-8") + data


def strip_cr(text: str) -> str:
    """mod_event_socket's ``strip_cr``: cut at the first ``\\r``, else at the first ``\\n``."""
    cut = text.find("\r")
    if cut < 0:
        cut = text.find("\n")
    return text if cut < 0 else text[:cut]


_UNESCAPE = {"n": "\n", "r": "\r", "t": "\t", "s": " "}


def _cleanup(token: str) -> str:
    """``cleanup_separated_string``: drop quotes and escapes, trim spaces outside quotes."""
    i = 0
    while i < len(token) and token[i] == " ":
        i += 1
    out: list[str] = []
    end = 0
    inside = False
    while i < len(token):
        ch = token[i]
        nxt = token[i + 1] if i + 1 < len(token) else ""
        if ch == "\\" and nxt and (nxt in "'\"\\ " or nxt in _UNESCAPE):
            out.append(_UNESCAPE.get(nxt, nxt))
            end = len(out)
            i += 2
            continue
        if ch == "'":
            inside = not inside
        else:
            out.append(ch)
            if ch != " " or inside:
                end = len(out)
        i += 1
    return "".join(out[:end])


def separate_string(text: str, max_args: int) -> list[str]:
    """Split API arguments like ``switch_separate_string(buf, ' ', argv, max_args)``."""
    starts: list[int] = []
    ends: dict[int, int] = {}
    state, i, inside = "start", 0, False
    while i < len(text) and len(starts) < max_args:
        ch = text[i]
        if state == "start":
            starts.append(i)  # the last slot is never closed: it keeps the rest of the line
            state = "skip_initial"
        elif state == "skip_initial":
            if ch == " ":
                i += 1
            else:
                state = "find_delim"
        elif state == "find_delim":
            if ch == "\\":
                i += 1
            elif ch == "'":
                inside = not inside
            elif ch == " " and not inside:
                ends[len(starts) - 1] = i
                state = "skip_ending"
            i += 1
        else:
            if ch == " ":
                i += 1
            else:
                state = "start"
    return [_cleanup(text[start : ends.get(n, len(text))]) for n, start in enumerate(starts)]


@dataclass
class EslPacket:
    """One client message: its command line, the header lines after it, and a body if announced."""

    command: str  # the whole first line (strip_cr applied)
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: str | None = None

    def get(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None


async def read_packet(reader: asyncio.StreamReader) -> EslPacket | None:
    """The next command, or None at end of stream (a half-read block at EOF is dropped, as FS does)."""
    lines: list[bytes] = []
    size = 0
    while True:
        line = await reader.readline()
        if not line:
            return None
        content = line[:-1] if line.endswith(b"\n") else line
        if not content.strip(b"\r"):
            if not line.endswith(b"\n"):
                return None
            if lines:
                break  # "\n" [\r...] "\n": the end of the block
            continue  # blank lines before a block are skipped
        lines.append(content)
        size += len(line)
        if size >= MAX_PACKET:
            break
    text = b"\n".join(lines).decode("utf-8", "replace")
    # FreeSWITCH splits the block at every run of \r and \n
    parts = [p for p in text.replace("\r", "\n").split("\n") if p]
    packet = EslPacket(command=strip_cr(text))
    for part in parts[1:]:
        name, sep, value = part.partition(":")
        if not sep:
            continue
        value = value.lstrip(" ")
        packet.headers.append((name, value))
        if name.lower() == "content-length":
            length = _atoi(value)
            if length > 0:
                data = await reader.readexactly(min(length, MAX_PACKET))
                packet.body = data.split(b"\0", 1)[0].decode("utf-8", "replace")
    return packet


def _atoi(text: str) -> int:
    digits = ""
    for i, ch in enumerate(text.strip()):
        if ch.isdigit() or (i == 0 and ch in "+-"):
            digits += ch
        else:
            break
    try:
        return int(digits)
    except ValueError:
        return 0
