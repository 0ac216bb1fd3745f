"""Helpers of the Realtime stand-in (realtime_server.py): server VAD, reply audio, session config,
event bodies, and the knobs and records the stand-in exposes to tests.

``EnergyVad`` is the stand-in's ``server_vad``: RMS energy over 20 ms windows of 24 kHz PCM16 LE, on
the timeline of all audio written to the input buffer during the session (as OpenAI's ``audio_start_ms``
/ ``audio_end_ms`` are). Like OpenAI, ``audio_start_ms`` includes ``prefix_padding_ms`` (start of the
first loud window minus the padding, floored at 0) and ``audio_end_ms`` includes ``silence_duration_ms``
(end of the last loud window plus the silence that ended the turn).

``validate_session`` checks a GA ``session.update`` body and returns the merged config or raises
``SessionError`` (param, message, code) for an ``error`` event; nothing is applied on error. Unknown
keys are refused as OpenAI does (``unknown_parameter``), so a client speaking the beta shape
(``input_audio_format``, top-level ``voice`` / ``turn_detection``) is caught.

``refusal`` decides the HTTP status of a refused WebSocket upgrade; the rest builds event bodies.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import itertools
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import numpy as np

INPUT_RATE = 24000
WINDOW_MS = 20
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
YANDEX_OUTPUT_RATES = (24000, 44100, 16000, 8000)
SESSION_KEYS = {
    "type", "model", "instructions", "output_modalities", "audio", "tools", "tool_choice",
    "max_output_tokens", "tracing", "truncation", "prompt", "include",
}  # fmt: skip
TURN_KEYS = {
    "type", "threshold", "prefix_padding_ms", "silence_duration_ms", "create_response",
    "interrupt_response", "idle_timeout_ms", "eagerness",
}  # fmt: skip
YANDEX_MODEL = re.compile(r"^gpt://[^/]+/speech-realtime-[0-9]+(/latest)?$")
STATUS_CODES = {403: "permission_denied", 429: "rate_limit_exceeded", 500: "server_error", 503: "unavailable"}
DEFAULT_TURN: dict[str, Any] = {
    "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
    "create_response": True, "interrupt_response": True, "idle_timeout_ms": None,
}  # fmt: skip


@dataclass(frozen=True)
class VadEvent:
    kind: Literal["started", "stopped"]
    ms: int  # on the input buffer timeline


class EnergyVad:
    """Hysteresis over 20 ms RMS windows; feed any byte count (partial windows and odd bytes carry)."""

    def __init__(self, rms_threshold: float, silence_ms: int, prefix_ms: int) -> None:
        self.rms_threshold, self.silence_ms, self.prefix_ms = rms_threshold, silence_ms, prefix_ms
        self.window_bytes = INPUT_RATE * WINDOW_MS // 1000 * 2
        self.pending = b""
        self.windows = 0  # complete windows seen in the session
        self.in_speech = False
        self.last_loud_end_ms = 0

    def configure(self, rms_threshold: float, silence_ms: int, prefix_ms: int) -> None:
        self.rms_threshold, self.silence_ms, self.prefix_ms = rms_threshold, silence_ms, prefix_ms

    def feed(self, pcm: bytes) -> list[VadEvent]:
        data = self.pending + pcm
        usable = len(data) - len(data) % self.window_bytes
        self.pending = data[usable:]
        events: list[VadEvent] = []
        if not usable:
            return events
        samples = (
            np.frombuffer(data[:usable], dtype="<i2").astype(np.float64).reshape(-1, self.window_bytes // 2)
        )
        for rms in np.sqrt(np.mean(samples**2, axis=1)):
            start_ms, self.windows = self.windows * WINDOW_MS, self.windows + 1
            end_ms = start_ms + WINDOW_MS
            if rms >= self.rms_threshold:
                if not self.in_speech:
                    self.in_speech = True
                    events.append(VadEvent("started", max(0, start_ms - self.prefix_ms)))
                self.last_loud_end_ms = end_ms
            elif self.in_speech and end_ms - self.last_loud_end_ms >= self.silence_ms:
                self.in_speech = False
                events.append(VadEvent("stopped", end_ms))
        return events

    def reset_turn(self) -> None:
        """``input_audio_buffer.clear``: drop a turn in progress; the timeline keeps running."""
        self.in_speech = False


def reply_pcm(rate: int, seconds: float, freq: float = 330.0, amplitude: int = 6000) -> bytes:
    """A reply 'voice': a tone with a 4 Hz syllable envelope, PCM16 LE mono at ``rate``."""
    t = np.arange(int(rate * seconds)) / rate
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)
    return (amplitude * envelope * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


class SessionError(Exception):
    def __init__(self, param: str, message: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param, self.message, self.code = param, message, code


def default_session(flavor: str, session_id: str, model: str) -> dict[str, Any]:
    voice = "dasha" if flavor == "yandex" else "alloy"
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": INPUT_RATE},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": dict(DEFAULT_TURN),
            },
            "output": {"format": {"type": "audio/pcm", "rate": INPUT_RATE}, "voice": voice, "speed": 1.0},
        },
    }


def _need(cond: bool, param: str, message: str, code: str = "invalid_value") -> None:
    if not cond:
        raise SessionError(param, message, code)


def _unknown(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in obj:
        _need(key in allowed, f"{where}.{key}", f"Unknown parameter: '{where}.{key}'.", "unknown_parameter")


def _format(fmt: Any, where: str, rates: tuple[int, ...]) -> dict[str, Any]:
    _need(isinstance(fmt, dict), where, f"'{where}' must be an object")
    _unknown(fmt, {"type", "rate", "channels"}, where)
    _need(fmt.get("type") == "audio/pcm", f"{where}.type", "the stand-in serves only 'audio/pcm'")
    rate = fmt.get("rate", INPUT_RATE)
    _need(rate in rates, f"{where}.rate", f"Invalid value: {rate!r}. Supported values are: {list(rates)}.")
    _need(fmt.get("channels", 1) == 1, f"{where}.channels", "only mono audio is supported")
    return {"type": "audio/pcm", "rate": rate}


def _turn(td: Any, current: dict[str, Any] | None) -> dict[str, Any] | None:
    w = "session.audio.input.turn_detection"
    if td is None:
        return None
    _need(isinstance(td, dict), w, f"'{w}' must be an object or null")
    _unknown(td, TURN_KEYS, w)
    _need(td.get("type") in ("server_vad", "semantic_vad"), f"{w}.type", "expected server_vad|semantic_vad")
    merged = {**(current or DEFAULT_TURN), **td}
    threshold = merged["threshold"]
    _need(isinstance(threshold, int | float) and 0 <= threshold <= 1, f"{w}.threshold", "threshold: [0, 1]")
    for key in ("prefix_padding_ms", "silence_duration_ms"):
        _need(isinstance(merged[key], int) and merged[key] >= 0, f"{w}.{key}", f"{key} must be an int >= 0")
    for key in ("create_response", "interrupt_response"):
        _need(isinstance(merged[key], bool), f"{w}.{key}", f"{key} must be a boolean")
    return merged


def validate_session(
    flavor: str, current: dict[str, Any], update: Any, audio_started: bool
) -> dict[str, Any]:
    """The session after ``update`` (a ``session.update``'s ``session``), or SessionError."""
    _need(isinstance(update, dict), "session", "'session' must be an object", "missing_required_parameter")
    _unknown(update, SESSION_KEYS, "session")
    if flavor == "openai":
        _need(update.get("type") == "realtime", "session.type", "Missing required parameter: 'session.type'.")
    else:
        _need(update.get("type", "realtime") == "realtime", "session.type", "session.type must be 'realtime'")
    new = copy.deepcopy(current)
    if "instructions" in update:
        _need(
            isinstance(update["instructions"], str), "session.instructions", "instructions must be a string"
        )
        new["instructions"] = update["instructions"]
    if "output_modalities" in update:
        mods = update["output_modalities"]
        allowed = [["audio"], ["text"]] if flavor == "openai" else [["audio"], ["text"], ["text", "audio"]]
        _need(
            isinstance(mods, list) and sorted(mods) in [sorted(a) for a in allowed],
            "session.output_modalities",
            f"Invalid value: {mods!r}. Supported values are: {allowed}.",
        )
        new["output_modalities"] = mods
    for key in ("tools", "tool_choice", "max_output_tokens", "tracing", "truncation", "prompt", "include"):
        if key in update:
            new[key] = update[key]
    audio = update.get("audio", {})
    _need(isinstance(audio, dict), "session.audio", "'session.audio' must be an object")
    _unknown(audio, {"input", "output"}, "session.audio")
    inp, out = audio.get("input", {}), audio.get("output", {})
    _need(isinstance(inp, dict) and isinstance(out, dict), "session.audio", "input/output must be objects")
    _unknown(inp, {"format", "turn_detection", "transcription", "noise_reduction"}, "session.audio.input")
    _unknown(out, {"format", "voice", "speed"}, "session.audio.output")
    if "format" in inp:
        new["audio"]["input"]["format"] = _format(inp["format"], "session.audio.input.format", (INPUT_RATE,))
    if "turn_detection" in inp:
        current_td = current["audio"]["input"]["turn_detection"]
        new["audio"]["input"]["turn_detection"] = _turn(inp["turn_detection"], current_td)
    for key in ("transcription", "noise_reduction"):
        if key in inp:
            new["audio"]["input"][key] = inp[key]
    if "format" in out:
        rates = YANDEX_OUTPUT_RATES if flavor == "yandex" else (INPUT_RATE,)
        new["audio"]["output"]["format"] = _format(out["format"], "session.audio.output.format", rates)
    if "voice" in out:
        voice = out["voice"]
        w = "session.audio.output.voice"
        _need(isinstance(voice, str) and bool(voice), w, "voice must be a non-empty string")
        _need(flavor == "yandex" or voice in OPENAI_VOICES, w, f"Invalid value: '{voice}'.")
        changed = voice != current["audio"]["output"]["voice"]
        _need(
            not (changed and audio_started),
            w,
            "Cannot update a voice after audio output",
            "cannot_update_voice",
        )
        new["audio"]["output"]["voice"] = voice
    if "speed" in out:
        speed = out["speed"]
        w = "session.audio.output.speed"
        _need(isinstance(speed, int | float) and 0.25 <= speed <= 1.5, w, "speed must be within [0.25, 1.5]")
        new["audio"]["output"]["speed"] = speed
    return new


def echo_session(flavor: str, session: dict[str, Any]) -> dict[str, Any]:
    """What session.created / session.updated carry: Yandex echoes ``"rate": null`` (openai-realtime.md)."""
    echoed = copy.deepcopy(session)
    if flavor == "yandex":
        for side in ("input", "output"):
            echoed["audio"][side]["format"]["rate"] = None
    return echoed


def decode_pcm(audio: Any) -> bytes | None:
    """Strict base64 of PCM16 LE (an even byte count), or None."""
    try:
        pcm = base64.b64decode(audio, validate=True) if isinstance(audio, str) else None
    except (binascii.Error, ValueError):
        return None
    return pcm if pcm is not None and len(pcm) % 2 == 0 else None


def truncate_problem(event: dict[str, Any], role: str | None, audio_ms: int) -> tuple[str, str, str] | None:
    """(code, message, param) refusing a ``conversation.item.truncate``, or None."""
    item_id, end_ms = event.get("item_id"), event.get("audio_end_ms")
    if role is None:
        return "item_truncate_invalid_item_id", f"Item '{item_id}' not found.", "item_id"
    if role != "assistant":
        return "invalid_value", "Only assistant messages can be truncated.", "item_id"
    if event.get("content_index") != 0:
        return "invalid_value", "content_index must be 0 (the audio part).", "content_index"
    if not isinstance(end_ms, int) or isinstance(end_ms, bool) or end_ms < 0:
        return "invalid_value", "audio_end_ms must be an integer >= 0.", "audio_end_ms"
    if end_ms > audio_ms:
        return (
            "invalid_value",
            f"Audio content of {audio_ms}ms is already shorter than {end_ms}ms",
            "audio_end_ms",
        )
    return None


def refusal(
    flavor: str, keys: dict[str, str], path: str, authorization: str, knob_status: int | None
) -> tuple[int, str, str] | None:
    """(HTTP status, code, message) refusing the upgrade, or None: route, then key, then knobs, then model.

    ``keys`` maps a lower-case auth scheme to its accepted credential."""
    url = urlsplit(path)
    model = dict(parse_qsl(url.query)).get("model", "")
    scheme, _, key = authorization.partition(" ")
    if url.path != ("/v1/realtime/openai" if flavor == "yandex" else "/v1/realtime"):
        return 404, "not_found", f"no route {url.path}"
    if not key.strip() or keys.get(scheme.lower()) != key.strip():
        return 401, "invalid_api_key", "Incorrect API key provided."
    if knob_status is not None:
        return knob_status, STATUS_CODES.get(knob_status, "server_error"), "refused by a stand-in knob"
    if not (YANDEX_MODEL.match(model) if flavor == "yandex" else model):
        return 400, "invalid_model", f"Invalid model: '{model}'"
    return None


def refusal_body(flavor: str, status: int, code: str, message: str) -> bytes:
    if flavor == "yandex":  # the Yandex REST error shape (yandex-speechkit.md) [T]
        grpc = {400: 3, 401: 16, 403: 7, 404: 5, 429: 8, 500: 13, 503: 14}.get(status, 2)
        body: dict[str, Any] = {"error": {"grpcCode": grpc, "httpCode": status, "message": message}}
    else:
        body = {"error": {"type": "invalid_request_error", "code": code, "message": message, "param": None}}
    return json.dumps(body).encode() + b"\n"


def item_body(item_id: str, role: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": role, "status": status,
            "content": content}  # fmt: skip


def output_content(audio_out: bool, text: str) -> dict[str, Any]:
    return (
        {"type": "output_audio", "transcript": text} if audio_out else {"type": "output_text", "text": text}
    )


def response_body(
    response_id: str, status: str, output: list[Any], reason: str = "", usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    details = {"type": status, "reason": reason} if reason else None
    body = {"object": "realtime.response", "id": response_id, "status": status, "output": output,
            "status_details": details}  # fmt: skip
    return body if usage is None else {**body, "usage": usage}


def usage(input_audio_bytes: int, instructions: str, audio_ms: int, transcript: str) -> dict[str, Any]:
    """Deterministic token counts: ~10 tokens per second of input audio, 20 per second of output."""
    in_audio, in_text = input_audio_bytes // 4800, len(instructions.split())
    out_audio, out_text = audio_ms // 50, len(transcript.split())
    return {
        "total_tokens": in_audio + in_text + out_audio + out_text,
        "input_tokens": in_audio + in_text,
        "output_tokens": out_audio + out_text,
        "input_token_details": {"audio_tokens": in_audio, "text_tokens": in_text, "cached_tokens": 0},
        "output_token_details": {"audio_tokens": out_audio, "text_tokens": out_text},
    }


def text_deltas(text: str, n: int) -> list[str]:
    """``text`` cut into ``n`` deltas at word boundaries (some empty), joining back to ``text``."""
    words = text.split()
    cuts = [round(i * len(words) / n) for i in range(n + 1)]
    pieces = [" ".join(words[a:b]) for a, b in itertools.pairwise(cuts)]
    return [(" " if p and any(pieces[:i]) else "") + p for i, p in enumerate(pieces)]


@dataclass
class Knobs:
    transcripts: list[str] = field(default_factory=lambda: ["Здравствуйте, я хочу записаться к врачу."])
    replies: list[str] = field(default_factory=lambda: ["Здравствуйте! Чем могу помочь? Я слушаю вас."])
    reply_audio_s: float = 1.2
    chunk_ms: int = 100
    pace: float = 1.0  # seconds between audio chunks = pace × chunk duration; 0 = as fast as possible
    transcript_delay_s: float = 0.0
    vad_rms: float = 500.0  # int16 RMS at turn_detection.threshold 0.5 (scaled by threshold / 0.5)
    always_transcribe: bool | None = None  # None: the flavor's behaviour (see module doc)
    forbidden: bool = False  # 403 on upgrade
    rate_limited: bool = False  # 429 on upgrade
    http_status: int | None = None  # e.g. 500 / 503 on upgrade
    fail_after_response_created: bool = False  # error server_error, then close 1011
    stall: bool = False  # nothing after session.created
    malformed: bool = False  # a non-JSON text frame right after session.created
    close_mid_audio: bool = False  # close halfway through the first reply's audio
    close_code: int = 1011  # for close_mid_audio; 1006 drops the TCP connection without a close frame


@dataclass
class ClientEvent:
    session_id: str
    type: str
    payload: dict[str, Any]
    at: float  # time.monotonic() at arrival


@dataclass
class Truncation:
    session_id: str
    item_id: str
    content_index: int
    audio_end_ms: int
    at: float


@dataclass
class Cancel:
    session_id: str
    response_id: str
    reason: Literal["turn_detected", "client_cancelled"]
    audio_ms_sent: int
    at: float


@dataclass
class Handshake:
    path: str
    headers: dict[str, str]  # lower-case names
    status: int  # 101 when accepted


class StampedEvent(asyncio.Event):
    """An asyncio.Event that remembers when (time.monotonic()) it was first set."""

    at: float | None = None

    def set(self) -> None:
        if self.at is None:
            self.at = time.monotonic()
        super().set()


KNOWN_CLIENT_EVENTS = {
    "session.update", "input_audio_buffer.append", "input_audio_buffer.commit", "input_audio_buffer.clear",
    "conversation.item.create", "conversation.item.retrieve", "conversation.item.truncate",
    "conversation.item.delete", "response.create", "response.cancel", "output_audio_buffer.clear",
}  # fmt: skip


@dataclass
class SessionItem:
    """What a session remembers of a conversation item."""

    id: str
    role: str
    audio_ms: int = 0  # assistant audio sent so far


@dataclass
class PendingResponse:
    """The response a session is producing (``task`` streams its deltas)."""

    id: str
    item: SessionItem
    task: asyncio.Task[None] | None = None
    transcript: str = ""


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"
