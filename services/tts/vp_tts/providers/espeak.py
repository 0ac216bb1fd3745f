"""espeak-ng TTS: a formant voice, less intelligible than Festival but instant; the fallback.

One ``espeak-ng --stdout`` process per sentence (it starts in a few milliseconds); text goes in on
stdin so nothing in it can be taken for an option. Audio is streamed as espeak writes it. Closing the
stream kills the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
from collections.abc import AsyncGenerator
from typing import Self

from voiceplatform.providers import ProviderConnectionError, ProviderProtocolError, ProviderTimeoutError
from voiceplatform.providers.base import ProviderBase, ProviderContext

from ..settings import TtsSettings
from ..verbalize import verbalize

PROVIDER = "espeak"
SAMPLE_RATE = 22050
_VOICE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{1,8})?(\+[a-z0-9]{1,12})?$")
_TIMEOUT_S = 10.0


class EspeakTts(ProviderBase):
    name = PROVIDER
    sample_rate = SAMPLE_RATE

    scope = "process"

    @classmethod
    def from_context(cls, ctx: ProviderContext) -> Self:
        return cls(ctx.settings)

    def __init__(self, settings: TtsSettings) -> None:
        self.default_voice = settings.espeak_voice
        self.chunk_bytes = SAMPLE_RATE * settings.chunk_ms // 1000 * 2

    def resolve_voice(self, voice: str) -> str:
        """An espeak voice (``ru``, ``ru+f3``); another engine's voice name means the default."""
        voice = voice.strip().lower()
        return voice if _VOICE.match(voice) else self.default_voice

    async def stream_synthesize(self, text: str, voice: str) -> AsyncGenerator[bytes, None]:
        text = " ".join(verbalize(text).split())  # numbers, prices, dates in words
        if not text:
            return
        try:
            proc = await asyncio.create_subprocess_exec(
                "espeak-ng",
                "-v",
                self.resolve_voice(voice),
                "-b",
                "1",
                "--stdin",
                "--stdout",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError as exc:
            raise ProviderConnectionError(PROVIDER, f"cannot run espeak-ng: {type(exc).__name__}") from exc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(text.encode("utf-8") + b"\n")
            await proc.stdin.drain()
            proc.stdin.close()
            rate = await asyncio.wait_for(_read_wav_header(proc.stdout), _TIMEOUT_S)
            if rate != SAMPLE_RATE:
                raise ProviderProtocolError(PROVIDER, f"unexpected sample rate {rate}")
            pending = bytearray()
            total = 0
            while True:
                block = await asyncio.wait_for(proc.stdout.read(self.chunk_bytes), _TIMEOUT_S)
                if block:
                    pending += block
                # whole chunks as they fill; at the end whatever is left (an even number of bytes)
                while len(pending) >= self.chunk_bytes or (not block and len(pending) >= 2):
                    size = min(self.chunk_bytes, len(pending) - len(pending) % 2)
                    total += size
                    yield bytes(pending[:size])
                    del pending[:size]
                if not block:
                    break
            if await proc.wait() != 0 or total == 0:
                raise ProviderProtocolError(PROVIDER, f"espeak-ng exited {proc.returncode}, {total} bytes")
        except TimeoutError:
            raise ProviderTimeoutError(PROVIDER) from None
        except (BrokenPipeError, ConnectionResetError, asyncio.IncompleteReadError) as exc:
            raise ProviderProtocolError(PROVIDER, f"espeak-ng pipe failed: {type(exc).__name__}") from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.wait(), 1.0)


async def _read_wav_header(stream: asyncio.StreamReader) -> int:
    """Consume a streamed RIFF header up to the ``data`` chunk; return the sample rate.

    espeak writes placeholder sizes (it streams), so only the chunk layout is trusted.
    """
    riff = await stream.readexactly(12)
    if riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
        raise ProviderProtocolError(PROVIDER, "output is not a WAV stream")
    rate = 0
    while True:
        chunk_id, size = struct.unpack("<4sI", await stream.readexactly(8))
        if chunk_id == b"data":
            return rate
        if size > 1 << 16:
            raise ProviderProtocolError(PROVIDER, "malformed WAV header")
        body = await stream.readexactly(size + (size & 1))
        if chunk_id == b"fmt ":
            fmt, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if fmt != 1 or channels != 1 or bits != 16:
                raise ProviderProtocolError(PROVIDER, "expected 16-bit mono PCM")
