"""``rhvoice`` TTS: RHVoice 1.8 in-process (Debian non-free ``librhvoice5`` + ``rhvoice-russian``).

The clearest local Russian voice here (bench/bench_tts_local.py: Whisper-base word errors on its
speech about a third of Festival's), streaming 100 ms chunks of 24 kHz PCM from the first
milliseconds. The library is bound with ctypes (``rhvoice_engine``): one engine and one worker
thread per process, no subprocess per sentence. Numbers, prices and dates are spelled out first
(``verbalize``): RHVoice misreads "1 200", "₽" and dates on its own.

Voices: only the freely licensed ones are used unless a robot opts in. Irina, Aleksandr and Anna
are LGPL-2.1+, Elena GPL-3, Aleksandr-hq CC-BY-SA-4.0; the other Russian voices of the package
(Artemiy, Arina, Pavel, Tatiana, Victoria, Vitaliy, Yuriy, Mikhail, Evgeniy-Rus) are licensed for
non-commercial use only and need ``allow_non_commercial: true`` (docs/voices.md).

Options (``tts.providers["rhvoice"]``): ``voice``, ``rate``, ``pitch``, ``volume`` (each -1..1,
0 = the voice's own), ``allow_non_commercial``. A robot's ``tts.voice`` is used when it names an
RHVoice voice; another engine's voice name there (``msu_ru_nsh``, ``ru+f3``) means the default.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from voiceplatform.config import RobotConfig
from voiceplatform.providers import ProviderError
from voiceplatform.providers.base import ProviderBase, ProviderContext
from voiceplatform.resampling import StreamResampler

from ..settings import TtsSettings
from ..verbalize import verbalize
from .rhvoice_engine import PROVIDER, Prosody, RhvoiceEngine, RhvoiceUnavailable, shared_engine

SAMPLE_RATE = 24000
# voice (lower case) → licence; any other voice is treated as non-commercial only
FREE_VOICES = {
    "irina": "LGPL-2.1+",
    "aleksandr": "LGPL-2.1+",
    "anna": "LGPL-2.1+",
    "elena": "GPL-3.0",
    "aleksandr-hq": "CC-BY-SA-4.0",
}
# names of other engines' voices: festival (msu_ru_nsh, voice_…), espeak (ru, ru+f3)
_OTHER_ENGINE_VOICE = re.compile(r"^(voice_.*|.*_.*|[a-z]{2,3}(-[a-z0-9]+)?(\+[a-z0-9]+)?)$")


class RhvoiceTtsOptions(BaseModel):
    """``robot.settings.tts.providers["rhvoice"]``."""

    model_config = ConfigDict(extra="forbid")

    voice: str = ""
    rate: float = Field(default=0.0, ge=-1.0, le=1.0)
    pitch: float = Field(default=0.0, ge=-1.0, le=1.0)
    volume: float = Field(default=0.0, ge=-1.0, le=1.0)
    # the CC-BY-NC-ND voices: only for non-commercial robots, and only when said so
    allow_non_commercial: bool = False


def robot_options(robot: RobotConfig | None) -> RhvoiceTtsOptions:
    if robot is None:
        return RhvoiceTtsOptions()
    try:
        return RhvoiceTtsOptions.model_validate(robot.settings.tts.providers.get(PROVIDER, {}))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors())
        raise ProviderError(
            PROVIDER, f"bad tts.providers.rhvoice options: {problems}", retryable=False
        ) from None


class RhvoiceTts(ProviderBase):
    """Process-wide provider (engine, warm-up, health); ``for_robot`` binds a robot's options."""

    name = PROVIDER
    sample_rate = SAMPLE_RATE

    scope = "process"

    @classmethod
    def from_context(cls, ctx: ProviderContext) -> Self:
        return cls(ctx.settings)

    def __init__(self, settings: TtsSettings) -> None:
        self.settings = settings
        self.default_voice = settings.rhvoice_voice
        self._engine: RhvoiceEngine | None = None
        self._unavailable = ""
        self._robots: dict[str, tuple[RobotConfig, RhvoiceVoice]] = {}
        self._default = RhvoiceVoice(self, RhvoiceTtsOptions())

    def engine(self) -> RhvoiceEngine:
        """The shared engine; ``RhvoiceUnavailable`` (with the reason) when RHVoice is not installed."""
        if self._engine is None:
            s = self.settings
            try:
                self._engine = shared_engine(s.rhvoice_library, s.rhvoice_data_path, s.rhvoice_config_path)
            except RhvoiceUnavailable as exc:
                self._unavailable = exc.reason
                raise
        return self._engine

    async def start(self) -> None:
        """Load the engine and warm the default voice, so the first sentence starts at once."""
        engine = await asyncio.to_thread(self.engine)
        await engine.warm(self.resolve_voice("", RhvoiceTtsOptions()))

    async def aclose(self) -> None:
        self._robots.clear()  # the engine lives as long as the process (see rhvoice_engine)

    def ready(self) -> bool:
        return self._engine is not None

    def health(self) -> dict[str, Any]:
        if self._engine is None:
            return {"available": False, "reason": self._unavailable or "not loaded yet"}
        return {
            "available": True,
            "version": self._engine.version,
            "messages": self._engine.messages,
            "cancelled": self._engine.cancelled,
        }

    def for_robot(self, robot: RobotConfig | None) -> RhvoiceVoice:
        """This provider with the robot's options (validated once per loaded robot config)."""
        if robot is None:
            return self._default
        cached = self._robots.get(robot.name)
        if cached is not None and cached[0] is robot:
            return cached[1]
        bound = RhvoiceVoice(self, robot_options(robot))
        self._robots[robot.name] = (robot, bound)
        return bound

    def resolve_voice(self, voice: str, options: RhvoiceTtsOptions) -> str:
        """The RHVoice voice to speak with; ``ProviderError`` naming the choices when unknown."""
        engine = self.engine()
        wanted = (options.voice or voice).strip()
        if not wanted or (not options.voice and _OTHER_ENGINE_VOICE.match(wanted)):
            wanted = self.default_voice
        info = engine.voices.get(wanted.lower())
        if info is None:
            known = ", ".join(sorted(v.name for v in engine.voices.values()))
            raise ProviderError(
                PROVIDER, f"unknown RHVoice voice {wanted!r}; installed: {known}", retryable=False
            )
        if info.name.lower() not in FREE_VOICES and not options.allow_non_commercial:
            raise ProviderError(
                PROVIDER,
                f"RHVoice voice {info.name!r} is licensed for non-commercial use only; set "
                "tts.providers.rhvoice.allow_non_commercial=true to use it",
                retryable=False,
            )
        return info.name

    async def stream_synthesize(self, text: str, voice: str) -> AsyncGenerator[bytes, None]:
        async for chunk in self._default.stream_synthesize(text, voice):
            yield chunk


class RhvoiceVoice(ProviderBase):
    """``TtsProvider`` view of the shared engine with one robot's voice and prosody."""

    name = PROVIDER
    sample_rate = SAMPLE_RATE

    def __init__(self, provider: RhvoiceTts, options: RhvoiceTtsOptions) -> None:
        self.provider = provider
        self.options = options
        self.prosody = Prosody(options.rate, options.pitch, options.volume)

    async def stream_synthesize(self, text: str, voice: str) -> AsyncGenerator[bytes, None]:
        spoken = " ".join(verbalize(text).split())
        if not any(ch.isalnum() for ch in spoken):
            return  # nothing speakable ("…", "—"): no audio, not an error
        engine = self.provider.engine()
        name = self.provider.resolve_voice(voice, self.options)
        resampler: StreamResampler | None = None
        async for rate, pcm in engine.synthesize(spoken, name, self.prosody):
            if rate in (0, SAMPLE_RATE):
                yield pcm
                continue
            # every Russian voice is 24 kHz today; another rate is converted rather than mislabelled
            resampler = resampler or StreamResampler(rate, SAMPLE_RATE)
            out = resampler.feed(pcm)
            if out:
                yield out
        if resampler is not None:
            tail = resampler.flush()
            if tail:
                yield tail
