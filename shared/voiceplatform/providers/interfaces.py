"""Small async-iterator interfaces every provider implements.

Closing the iterator (``aclose``, which ``contextlib.aclosing`` and task cancellation do) must abort
the underlying request or stream at once: that is how barge-in stops a provider mid-stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from voiceplatform.wire import ChatMessage


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    is_final: bool
    language: str = ""


class AsrProvider(Protocol):
    name: str
    sample_rates: tuple[int, ...]

    def stream_recognize(
        self, audio: AsyncIterable[bytes], sample_rate: int, language: str
    ) -> AsyncIterator[Transcript]:
        """Consume 16-bit mono PCM chunks, yield partial and final transcripts."""
        ...


@dataclass(frozen=True, slots=True)
class LlmOptions:
    temperature: float = 0.5
    max_tokens: int = 80
    model: str = ""
    # opaque state of a deterministic dialogue engine, carried between turns in the dialog store
    dialog_state: str = ""
    # active prompt (topic) chosen by the prompt-router, for engines that answer by topic
    prompt_id: str = ""
    # "" for a caller utterance, "no_input" when the caller stayed silent, "dtmf" when the caller
    # pressed keys (see LlmRequest.event)
    event: str = ""
    # event "dtmf": the keys pressed (chat models get them as a hint message instead)
    keys: str = ""
    # per-call variables (outbound calls): ``{name}`` in a scripted engine's replies
    variables: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class LlmChunk:
    """A text delta; the last chunk may carry usage, new dialogue state and an end-of-call request."""

    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    dialog_state: str | None = None
    end_call: bool = False
    meta: dict[str, str] = field(default_factory=dict)
    # hand the caller over to this destination after the reply (LlmDone.transfer_to)
    transfer_to: str = ""


class LlmProvider(Protocol):
    name: str

    def stream_complete(
        self, messages: Sequence[ChatMessage], options: LlmOptions
    ) -> AsyncIterator[LlmChunk]:
        """Yield text deltas of the assistant reply."""
        ...


class TtsProvider(Protocol):
    name: str
    sample_rate: int

    def stream_synthesize(self, text: str, voice: str) -> AsyncIterator[bytes]:
        """Yield 16-bit mono PCM at ``sample_rate`` as soon as it is available."""
        ...


class VadModel(Protocol):
    """Pure per-window speech score in [0, 1]; hysteresis lives in the shared segmenter."""

    name: str

    def window_samples(self, sample_rate: int) -> int: ...
    def speech_probability(self, window: npt.NDArray[np.int16], sample_rate: int) -> float: ...
    def reset(self) -> None: ...
