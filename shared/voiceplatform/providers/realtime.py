"""The realtime (speech-to-speech, full duplex) provider interface and its events.

A realtime provider is one bidirectional session per call: caller audio goes in continuously, the
provider detects turns itself (server VAD) and streams the reply's audio and transcript back. The
events below are the vendor-neutral subset the platform acts on; a provider maps its wire events
to them and drops the rest. Audio is 16-bit mono PCM at the session's rates in both directions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol


@dataclass(frozen=True, slots=True)
class RealtimeSessionConfig:
    instructions: str
    voice: str = ""
    input_rate: int = 24000
    output_rate: int = 24000
    vad_threshold: float = 0.5
    silence_duration_ms: int = 500
    prefix_padding_ms: int = 300
    # earlier turns to seed a new session with (after a reconnect or a change of owner)
    history: tuple[tuple[Literal["user", "assistant"], str], ...] = ()


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    item_id: str
    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class InputTranscript:
    """What the caller said in input item ``item_id`` (may arrive after the reply started)."""

    item_id: str
    text: str
    failed: bool = False


@dataclass(frozen=True, slots=True)
class ResponseStarted:
    response_id: str


@dataclass(frozen=True, slots=True)
class ResponseItem:
    """The assistant message item a response speaks into (the id that truncation names)."""

    response_id: str
    item_id: str


@dataclass(frozen=True, slots=True)
class AudioDelta:
    response_id: str
    item_id: str
    pcm: bytes


@dataclass(frozen=True, slots=True)
class TranscriptDelta:
    response_id: str
    item_id: str
    text: str


@dataclass(frozen=True, slots=True)
class ResponseDone:
    response_id: str
    status: str  # completed | cancelled | failed | incomplete
    input_tokens: int = 0
    output_tokens: int = 0
    detail: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProviderNotice:
    """An ``error`` event that leaves the session open (most do): logged and counted."""

    code: str
    message: str


RealtimeEvent = (
    SpeechStarted
    | SpeechStopped
    | InputTranscript
    | ResponseStarted
    | ResponseItem
    | AudioDelta
    | TranscriptDelta
    | ResponseDone
    | ProviderNotice
)


class RealtimeConnection(Protocol):
    """One open session. Iterating yields events until the provider closes it (then raises
    ``ProviderError``: connection lost, session expired) or ``aclose`` is called (iteration ends)."""

    def events(self) -> AsyncIterator[RealtimeEvent]: ...
    async def append_audio(self, pcm: bytes) -> None: ...
    async def create_response(self, instructions: str = "") -> None: ...
    async def cancel_response(self) -> None: ...
    async def truncate(self, item_id: str, audio_end_ms: int) -> None: ...
    async def aclose(self) -> None: ...


class RealtimeProvider(Protocol):
    name: str

    async def connect(self, config: RealtimeSessionConfig) -> RealtimeConnection:
        """Open and configure a session; raise ``ProviderError`` (mapped) when that fails."""
        ...
