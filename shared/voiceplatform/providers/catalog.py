"""Every provider name a robot may choose, per role, as lazy ``module:Class`` targets.

The services build their ``ProviderRegistry`` from these tables and ``vp check`` validates a robot's
provider names (and, through each class's ``check``, its options) against the same tables, so a name
that passes the check is one a service can build. Nothing is imported here.
"""

from __future__ import annotations

from voiceplatform.providers.registry import ProviderRegistry

ASR = {
    "whisper": "vp_asr.providers.whisper:WhisperAsr",
    # cloud: built per robot (its keys and options), one instance shared by the robot's calls
    "yandex": "vp_asr.providers.yandex:YandexAsr",
}
LLM = {
    "script": "vp_llm.providers.script:ScriptDialog",
    "openai": "vp_llm.providers.openai_compat:OpenAICompatible",
    "yandex": "vp_llm.providers.yandexgpt:YandexGpt",
    "gemini": "vp_llm.providers.gemini:GeminiLlm",
}
TTS = {
    "rhvoice": "vp_tts.providers.rhvoice:RhvoiceTts",
    "festival": "vp_tts.providers.festival:FestivalTts",
    "espeak": "vp_tts.providers.espeak:EspeakTts",
    # cloud voices: built per robot (its keys and options), see ``ProviderBase.scope``
    "yandex": "vp_tts.providers.yandex:YandexTts",
    "elevenlabs": "vp_tts.providers.elevenlabs:ElevenLabsTts",
    "zvukogram": "vp_tts.providers.zvukogram:ZvukogramTts",
}
VAD = {
    "energy": "vp_vad.providers.energy:EnergyVad",
    "silero": "vp_vad.providers.silero:SileroVad",
}
# one class speaks both protocols' dialects; it picks by ``realtime.provider``
REALTIME = {
    "yandex": "vp_realtime.providers:RealtimeEndpoint",
    "openai": "vp_realtime.providers:RealtimeEndpoint",
}
BY_ROLE = {"asr": ASR, "llm": LLM, "tts": TTS, "vad": VAD, "realtime": REALTIME}
_REGISTRIES: dict[str, ProviderRegistry] = {}


def registry(role: str) -> ProviderRegistry:
    """The process's one registry of ``role`` ("asr", "llm", "tts", "vad", "realtime"): the service
    builds from it and the robot check validates against it, so an engine added to it in a process
    (a bench's stand-in) is known to both."""
    if role not in _REGISTRIES:
        _REGISTRIES[role] = ProviderRegistry(role, BY_ROLE[role])
    return _REGISTRIES[role]
