"""Offline Whisper-base (faster-whisper, int8 CPU) over VAD-bounded segments.

Whisper is not streaming: the provider collects the segment, then yields one final transcript.
Decoding runs in a worker thread behind a per-loop semaphore of one (2 cores: two parallel decodes
would each take twice as long). A cancelled caller gets ``CancelledError`` at once; the thread cannot
be interrupted, so it keeps the semaphore until it ends and its result is thrown away.

Phone audio (8 kHz) is brought to whisper's 16 kHz by a polyphase resampler (soxr, high quality): a
linear interpolator leaves images of the speech band above 4 kHz that whisper hears as hiss.
The robot's vocabulary goes to whisper as ``hotwords`` (a prompt the decoder is conditioned on).
Whisper's well-known "video subtitle" phrases on noise or silence are dropped as hallucinations.
"""

from __future__ import annotations

import asyncio
import re
import threading
import weakref
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import numpy.typing as npt
import soxr
import structlog

from voiceplatform.audio import pcm_to_array
from voiceplatform.config import AsrConfig
from voiceplatform.providers import ProviderError, ProviderProtocolError, Transcript
from voiceplatform.providers.base import ProviderBase, ProviderContext
from vp_asr.metrics import HALLUCINATIONS_DROPPED
from vp_asr.providers import whisper_model

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

log = structlog.get_logger("vp_asr.whisper")

WHISPER_RATE = 16000
COMPRESSION_RATIO_LIMIT = 2.4
# measured: a prompt echo over noise or silence has a no-speech probability of 0.35-0.65, real
# speech under 0.1; both conditions are needed to drop a transcript made only of vocabulary terms
PROMPT_ECHO_NO_SPEECH = 0.2
_WORD = re.compile(r"\w+")
# what whisper says over noise, music or silence (subtitle credits of its training videos), matched
# against the whole normalized transcript: a caller's "спасибо" alone is kept
_HALLUCINATED = re.compile(
    r"^(?:"
    r"продолжение следует"
    r"|субтитры (?:сделал|создавал|делал|подготовил|подогнал)\b.*"
    r"|редактор субтитров\b.*"
    r"|корректор\b.*"
    r"|спасибо за (?:просмотр|внимание)"
    r"|благодарю за (?:просмотр|внимание)"
    r"|подписывайтесь на (?:канал|наш канал)\b.*"
    r"|ставьте лайки\b.*"
    r"|до новых встреч"
    r"|(?:\w+ )?музыка"
    r"|аплодисменты"
    r")$"
)

_decode_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _decode_slot() -> asyncio.Semaphore:
    """One decode at a time per event loop (the model is shared by every call in the process)."""
    loop = asyncio.get_running_loop()
    slot = _decode_slots.get(loop)
    if slot is None:
        slot = _decode_slots[loop] = asyncio.Semaphore(1)
    return slot


def whisper_language(language: str) -> str:
    """``ru-RU`` → ``ru``; Whisper takes bare ISO 639-1 codes."""
    return (language or "ru").replace("_", "-").split("-")[0].lower()


def is_repeat_loop(text: str) -> bool:
    """A run of one n-gram (n ≤ 4) repeated ≥ 4 times over ≥ 8 words: the decoder got stuck."""
    words = _WORD.findall(text.lower())
    for n in range(1, 5):
        for i in range(len(words) - 2 * n + 1):
            gram = words[i : i + n]
            count, j = 1, i + n
            while words[j : j + n] == gram:
                count += 1
                j += n
            if count >= 4 and count * n >= 8:
                return True
    return False


def _normalized(text: str) -> str:
    return " ".join(_WORD.findall(text.lower().replace("ё", "е")))


def is_hallucination(text: str) -> bool:
    """A transcript made only of whisper's stock phrases (one or several of them)."""
    if _HALLUCINATED.match(_normalized(text)):  # one phrase (its initials may hold dots)
        return True
    parts = [_normalized(p) for p in re.split(r"[.!?…]+(?:\s+|$)|\n+", text)]
    parts = [p for p in parts if p]
    return bool(parts) and all(_HALLUCINATED.match(p) for p in parts)


def echoes_vocabulary(text: str, terms: list[str]) -> bool:
    """The transcript is only words of the hotword prompt read back (the last one maybe cut short):
    what whisper makes of noise or silence when it is given hotwords. Alone this would also match a
    caller who said just a product name, so the provider checks the no-speech probability too."""
    words = _normalized(text).split()
    known = {w for term in terms for w in _normalized(term).split()}
    if not words or not known:
        return False
    *head, last = words
    return all(w in known for w in head) and (
        last in known or (len(last) >= 3 and any(k.startswith(last) for k in known))
    )


def to_whisper_rate(samples: npt.NDArray[np.int16], sample_rate: int) -> npt.NDArray[np.float32]:
    """int16 PCM at ``sample_rate`` to float32 at 16 kHz in [-1, 1)."""
    audio = samples.astype(np.float32) / 32768.0
    if sample_rate == WHISPER_RATE or audio.size == 0:
        return audio
    result: npt.NDArray[np.float32] = soxr.resample(audio, sample_rate, WHISPER_RATE, quality="HQ")
    return result.astype(np.float32, copy=False)


def hotwords(terms: list[str], limit: int = 60) -> str | None:
    """The vocabulary as one hotword prompt; the first terms win when it is long (whisper's prompt
    has room for about 220 tokens and a long one costs decode time on every segment)."""
    words: list[str] = []
    for term in terms:
        term = " ".join(term.split())
        if term and term not in words:
            words.append(term)
    return ", ".join(words[:limit]) or None


@dataclass(frozen=True, slots=True)
class _Decoded:
    text: str
    dropped: str = ""  # why the text was discarded, empty when it was not


class WhisperAsr(ProviderBase):
    """``AsrProvider`` over the process-wide Whisper-base model."""

    name = "whisper"
    sample_rates = (8000, 16000)

    scope = "call"

    @classmethod
    def from_context(cls, ctx: ProviderContext) -> Self:
        return cls(ctx.options)

    def __init__(self, config: AsrConfig | None = None, model: WhisperModel | None = None) -> None:
        cfg = config or AsrConfig()
        self.beam_size = cfg.beam_size
        self.max_new_tokens = cfg.max_new_tokens
        self.vocabulary = list(cfg.vocabulary)
        self.hotwords = hotwords(cfg.vocabulary)
        self._model = model

    @classmethod
    def preload(cls) -> None:
        """Assemble and load the shared model (blocking; the service calls it in a thread at start)."""
        whisper_model.shared_model()

    @classmethod
    def is_loaded(cls) -> bool:
        return bool(whisper_model.model_loaded())

    async def stream_recognize(
        self, audio: AsyncIterable[bytes], sample_rate: int, language: str
    ) -> AsyncIterator[Transcript]:
        if sample_rate not in self.sample_rates:
            raise ProviderProtocolError(self.name, f"unsupported sample rate {sample_rate}")
        pcm = b"".join([chunk async for chunk in audio])
        if len(pcm) % 2:
            raise ProviderProtocolError(self.name, "odd PCM byte count")
        lang = whisper_language(language)
        decoded = await self._transcribe(to_whisper_rate(pcm_to_array(pcm), sample_rate), lang)
        if decoded.dropped:
            HALLUCINATIONS_DROPPED.labels(self.name, decoded.dropped).inc()
            log.info("asr.hallucination_dropped", reason=decoded.dropped, pii_text=decoded.text)
        yield Transcript(text="" if decoded.dropped else decoded.text, is_final=True, language=lang)

    async def _transcribe(self, audio: npt.NDArray[np.float32], language: str) -> _Decoded:
        model = self._model or await asyncio.to_thread(whisper_model.shared_model)
        cancelled = threading.Event()
        slot = _decode_slot()
        await slot.acquire()
        try:
            work = asyncio.ensure_future(asyncio.to_thread(self._decode, model, audio, language, cancelled))
        except BaseException:
            slot.release()
            raise

        def _finished(done: asyncio.Future[_Decoded]) -> None:
            slot.release()
            if not done.cancelled():
                done.exception()  # retrieved here so an abandoned failure is not reported as unhandled

        work.add_done_callback(_finished)
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(
                self.name, f"transcription failed: {type(exc).__name__}", retryable=False
            ) from exc

    def _decode(
        self, model: WhisperModel, audio: npt.NDArray[np.float32], language: str, cancelled: threading.Event
    ) -> _Decoded:
        if cancelled.is_set():
            return _Decoded("", "cancelled")
        options: dict[str, Any] = {
            "language": language,
            "beam_size": self.beam_size,
            # a single temperature: the default fallback tuple re-decodes doubtful audio up to 6
            # times and then hallucinates
            "temperature": 0.0,
            "condition_on_previous_text": False,
            "max_new_tokens": self.max_new_tokens,
            "vad_filter": False,  # our VAD already bounded the segment
            "without_timestamps": True,
            "hotwords": self.hotwords,
        }
        segments, _info = model.transcribe(audio, **options)
        texts: list[str] = []
        no_speech = 0.0
        for segment in segments:  # decoding happens lazily while iterating
            if cancelled.is_set():
                return _Decoded("", "cancelled")
            if segment.compression_ratio > COMPRESSION_RATIO_LIMIT:
                return _Decoded(segment.text.strip(), "compression_ratio")
            no_speech = max(no_speech, segment.no_speech_prob)
            if segment.text.strip():
                texts.append(segment.text.strip())
        text = " ".join(texts)
        if is_repeat_loop(text):
            return _Decoded(text, "repeat_loop")
        if is_hallucination(text):
            return _Decoded(text, "stock_phrase")
        if no_speech >= PROMPT_ECHO_NO_SPEECH and echoes_vocabulary(text, self.vocabulary):
            return _Decoded(text, "prompt_echo")
        return _Decoded(text)
