"""Instant engines for the platform-overhead benchmark (bench only, never product code).

They answer at once, so whatever latency remains between the caller's speech end and the first
robot frame at the gateway is the platform's own: the bus hops, the services' handlers, the VAD
hang-over, the playout loop. They are injected into the services' provider registries by name
(``register_instant_engines``); no product module is edited.

When the TTS service package is not importable yet, ``InstantTtsStage`` stands in for the whole
TTS service (same subjects, queue group and messages), so the rest of the pipeline can be measured.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, Self

import numpy as np

from voiceplatform import subjects
from voiceplatform.bus import Bus, Envelope, Subscription
from voiceplatform.providers import ProviderRegistry, Transcript
from voiceplatform.providers.base import ProviderBase, ProviderContext
from voiceplatform.wire import LlmSentence, Message, TtsAudio

INSTANT = "instant"
ASR_TEXT = "Сколько стоит доставка?"
TONE_MS = 200
TONE_HZ = 440.0
TONE_AMPLITUDE = 6000


def tone_pcm(sample_rate: int, ms: int = TONE_MS) -> bytes:
    t = np.arange(sample_rate * ms // 1000) / sample_rate
    return (np.sin(2 * np.pi * TONE_HZ * t) * TONE_AMPLITUDE).astype("<i2").tobytes()


class InstantAsr(ProviderBase):
    """Consumes the segment and returns a fixed Russian text at once."""

    name = INSTANT
    sample_rates = (8000, 16000)
    scope = "call"

    @classmethod
    def from_context(cls, ctx: ProviderContext) -> Self:
        return cls()

    def __init__(self, *_: Any, **__: Any) -> None:
        pass

    async def stream_recognize(
        self, audio: AsyncIterable[bytes], sample_rate: int, language: str
    ) -> AsyncIterator[Transcript]:
        async for _ in audio:
            pass
        yield Transcript(text=ASR_TEXT, is_final=True, language="ru")


class InstantTts(ProviderBase):
    """Yields ``TONE_MS`` of a tone at once, whatever the text."""

    name = INSTANT
    scope = "process"

    @classmethod
    def from_context(cls, ctx: ProviderContext) -> Self:
        return cls(ctx.settings)

    def __init__(self, config: Any = None, *_: Any, **__: Any) -> None:
        tts_config = getattr(getattr(config, "settings", None), "tts", config)  # TtsConfig or RobotConfig
        self.sample_rate = int(getattr(tts_config, "sample_rate", 16000))
        self._pcm = tone_pcm(self.sample_rate)

    async def stream_synthesize(self, text: str, voice: str) -> AsyncIterator[bytes]:
        yield self._pcm


def _registries(module_name: str, role: str) -> list[ProviderRegistry]:
    module = importlib.import_module(module_name)
    return [
        value for value in vars(module).values() if isinstance(value, ProviderRegistry) and value.role == role
    ]


def register_instant_engines() -> dict[str, bool]:
    """Add ``instant`` to the ASR and TTS provider registries; report which roles took it.

    The registries are module-level objects of the service packages, so this works in-process and
    in a child process that calls it before building its service.
    """
    done = {"asr": False, "tts": False}
    for registry in _registries("vp_asr.app", "asr"):
        registry._entries[INSTANT] = "bench.instant_engines:InstantAsr"
        done["asr"] = True
    for module_name in ("vp_tts.app", "vp_tts.providers"):
        try:
            found = _registries(module_name, "tts")
        except ImportError:
            continue
        for registry in found:
            registry._entries[INSTANT] = "bench.instant_engines:InstantTts"
            done["tts"] = True
    return done


def tts_service_available() -> bool:
    try:
        importlib.import_module("vp_tts.app")
    except ImportError:
        return False
    return register_instant_engines()["tts"]


class InstantTtsStage:
    """Bench stand-in for the TTS service while ``vp_tts`` is missing: llm.sentence → one tts.audio.

    It answers with ``TONE_MS`` of tone at the call's rate, one chunk marked ``last``.
    """

    name = "tts"

    def __init__(self) -> None:
        self._sub: Subscription | None = None
        self._bus: Bus | None = None
        self._pcm: dict[int, bytes] = {}

    async def start(self, bus: Bus) -> None:
        self._bus = bus
        self._sub = await bus.subscribe(
            subjects.ANY_LLM_SENTENCE, self._on_sentence, queue=subjects.queue_group("tts")
        )

    async def drain(self, timeout: float) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    def ready(self) -> bool:
        return self._sub is not None

    def health(self) -> dict[str, Any]:
        return {}

    def asgi_app(self) -> None:
        return None

    async def _on_sentence(self, env: Envelope) -> Message | None:
        msg = env.message
        if not isinstance(msg, LlmSentence) or self._bus is None:
            return None
        pcm = self._pcm.get(msg.sample_rate)
        if pcm is None:
            pcm = self._pcm[msg.sample_rate] = tone_pcm(msg.sample_rate)
        await self._bus.publish(
            subjects.tts_audio(msg.call_id),
            TtsAudio(
                call_id=msg.call_id,
                turn_id=msg.turn_id,
                index=msg.index,
                seq=0,
                sample_rate=msg.sample_rate,
                pcm=pcm,
                last=True,
                text=msg.text,
                provider=INSTANT,
            ),
        )
        return None
