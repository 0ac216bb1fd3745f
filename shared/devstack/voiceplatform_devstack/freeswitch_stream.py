"""The mod_audio_stream side of a peer channel (docs/protocols/freeswitch.md; amigniter's).

One WebSocket client per channel ("media bug"). On open it sends the start metadata as the first
text frame, then fires ``mod_audio_stream::connect``. The real module may send audio before the
metadata: frames the channel queued while a slow handshake was pending go out first (measured: a
handshake answered 20 ms late put one frame first, 100 ms five). ``early_frames`` models that race:
that many audio frames, then the metadata. binary frames of L16 at the stream rate
follow, one per 20 ms of the call (the channel's media clock drives ``feed``). Text from the
server: a valid ``streamAudio`` message is written to ``<temp>/<uuid>_<n>.tmp.<ext>`` and fires
``mod_audio_stream::play`` (the ``data`` object without ``audioData``, plus ``file``); anything else
fires ``mod_audio_stream::json`` with the text as body. The server closing fires
``mod_audio_stream::disconnect``; a failed connect fires ``mod_audio_stream::error`` (code 6) and
detaches the stream. JSON keys are looked up case-insensitively, as cJSON_GetObjectItem does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from pathlib import Path
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from voiceplatform.resampling import StreamResampler
from voiceplatform_devstack.freeswitch_media import RAW_RATES, STREAM_AUDIO_EXT, interleave, mix
from voiceplatform_devstack.freeswitch_wire import cjson_dumps

EXT_BY_RATE = {rate: ext for ext, rate in RAW_RATES.items()}
CONNECT_FAILED = 6
CONNECT_TIMEOUT_S = 5.0


class StreamHost(Protocol):
    uuid: str
    rate: int
    temp_dir: Path
    events_text: list[dict[str, Any]]
    events_text_raw: list[str]

    def fire_custom(self, subclass: str, body: str) -> None: ...
    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]: ...
    def stream_detached(self, stream: AudioStream) -> None: ...


def _item(obj: dict[str, Any], key: str) -> tuple[str, Any] | None:
    for name, value in obj.items():
        if name.lower() == key.lower():
            return name, value
    return None


class AudioStream:
    def __init__(
        self,
        host: StreamHost,
        url: str,
        mix_type: str,
        rate: int,
        metadata: str | None,
        early_frames: int = 0,
    ) -> None:
        self.host = host
        # audio frames sent before the metadata: what a slow handshake queued (one per 20 ms late)
        self._early_left = early_frames
        self.url = url
        self.mix_type = mix_type  # mono | mixed | stereo
        self.rate = rate
        self.metadata = metadata
        self.channels = 2 if mix_type == "stereo" else 1
        self.frame_bytes = rate // 50 * 2 * self.channels
        self.paused = False
        self.ws: ClientConnection | None = None
        self.frames_sent = 0
        self.binary_received = 0
        self.files: list[Path] = []
        self._play_n = 0
        self._out = bytearray()
        self._closing = False
        self._resamplers = [StreamResampler(host.rate, rate) for _ in range(self.channels)]
        self._receiver: asyncio.Task[Any] | None = None

    @property
    def connected(self) -> bool:
        return self.ws is not None and not self._closing and self.ws.close_code is None

    async def connect(self) -> bool:
        try:
            self.ws = await connect(
                self.url, open_timeout=CONNECT_TIMEOUT_S, max_size=None, ping_interval=None
            )
        except Exception as exc:  # refused, DNS, TLS, HTTP status, timeout: all CONNECT_FAILED
            message = {"code": CONNECT_FAILED, "error": str(exc) or type(exc).__name__}
            self.host.fire_custom(
                "mod_audio_stream::error", cjson_dumps({"status": "error", "message": message})
            )
            self.host.stream_detached(self)
            return False
        if self.metadata and not self._early_left:
            await self.ws.send(self.metadata)
        self.host.fire_custom("mod_audio_stream::connect", cjson_dumps({"status": "connected"}))
        self._receiver = self.host.spawn(self._receive(self.ws), f"fs-stream-rx-{self.host.uuid}")
        return True

    async def feed(self, caller: bytes, robot: bytes) -> None:
        """One 20 ms frame of the call (call rate); sends whatever full stream frames it completes."""
        if not self.connected or self.paused:
            return
        if self.mix_type == "mono":
            parts = [caller]
        elif self.mix_type == "mixed":
            parts = [mix(caller, robot)]
        else:
            parts = [caller, robot or bytes(len(caller))]
        parts = [r.feed(p) for r, p in zip(self._resamplers, parts, strict=True)]
        self._out += parts[0] if self.channels == 1 else interleave(parts[0], parts[1])
        while len(self._out) >= self.frame_bytes:
            frame = bytes(self._out[: self.frame_bytes])
            del self._out[: self.frame_bytes]
            await self.send(frame)

    async def send(self, data: bytes | str) -> None:
        if self.ws is None:
            return
        try:
            await self.ws.send(data)
        except ConnectionClosed:
            return
        if isinstance(data, bytes):
            self.frames_sent += 1
            if self._early_left:
                self._early_left -= 1
                if not self._early_left and self.metadata:
                    with contextlib.suppress(ConnectionClosed):
                        await self.ws.send(self.metadata)

    async def stop(self, text: str | None) -> None:
        """``uuid_audio_stream stop [text]``: the text frame; the close and its disconnect event follow
        in the background (mod_audio_stream disconnects in a detached thread and answers at once)."""
        if text and self.connected:
            await self.send(text)
        was_open = self.connected
        self._closing = True
        self.delete_files()
        self.host.spawn(self._close_after_stop(was_open), f"fs-stream-stop-{self.host.uuid}")

    async def _close_after_stop(self, report: bool) -> None:
        await self._close()
        if report:
            body = {"status": "disconnected", "message": {"code": 1000, "reason": ""}}
            self.host.fire_custom("mod_audio_stream::disconnect", cjson_dumps(body))

    async def close_for_hangup(self) -> None:
        """The channel is going away: close, remove the temp files, no event (the session is gone)."""
        await self._close()
        self.delete_files()

    def abort(self) -> None:
        """The TCP connection dies without a close frame."""
        if self.ws is not None:
            self.ws.transport.abort()

    async def _close(self) -> None:
        self._closing = True
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 2.0)
        if self._receiver is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._receiver, 2.0)

    def delete_files(self) -> None:
        for file in self.files:
            with contextlib.suppress(OSError):
                file.unlink()

    async def _receive(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                if isinstance(message, str):
                    self._on_text(message)
                else:
                    self.binary_received += 1  # the community module does not play binary audio
        except ConnectionClosed:
            pass
        if self._closing:
            return
        code = ws.close_code if ws.close_code is not None else 1006
        body = {"status": "disconnected", "message": {"code": code, "reason": ws.close_reason or ""}}
        self.host.fire_custom("mod_audio_stream::disconnect", cjson_dumps(body))

    def _on_text(self, text: str) -> None:
        self.host.events_text_raw.append(text)
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            self.host.events_text.append(obj)
            body = self._stream_audio(obj)
            if body is not None:
                self.host.fire_custom("mod_audio_stream::play", body)
                return
        self.host.fire_custom("mod_audio_stream::json", text)

    def _stream_audio(self, obj: dict[str, Any]) -> str | None:
        """``processMessage``: the play event body when ``obj`` is a usable streamAudio message."""
        kind = _item(obj, "type")
        data_item = _item(obj, "data")
        if (
            kind is None
            or kind[1] != "streamAudio"
            or data_item is None
            or not isinstance(data_item[1], dict)
        ):
            return None
        data = dict(data_item[1])
        audio_item = _item(data, "audioData")
        if audio_item is not None:
            del data[audio_item[0]]
        data_type = _item(data, "audioDataType")
        ext = STREAM_AUDIO_EXT.get(data_type[1]) if data_type and isinstance(data_type[1], str) else None
        if ext == "":
            rate_item = _item(data, "sampleRate")
            value = rate_item[1] if rate_item else 0
            rate = int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0
            ext = EXT_BY_RATE.get(rate, "")
        if not ext or audio_item is None or not isinstance(audio_item[1], str):
            return None
        try:
            raw = base64.b64decode(audio_item[1])
        except (binascii.Error, ValueError):
            return None
        path = self.host.temp_dir / f"{self.host.uuid}_{self._play_n}.tmp{ext}"
        self._play_n += 1
        path.write_bytes(raw)
        self.files.append(path)
        data["file"] = str(path)
        return cjson_dumps(data)
