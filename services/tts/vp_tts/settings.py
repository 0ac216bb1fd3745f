"""TTS process settings (env prefix ``VP_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field

from voiceplatform.config import ServiceSettings


def _env(field: str, env: str) -> AliasChoices:
    # accept the field name in code and the documented VP_TTS_* name in the environment
    return AliasChoices(field, env)


class TtsSettings(ServiceSettings):
    # a few bus round trips per sentence of every call: uvloop's transports and futures cost less
    event_loop: Literal["asyncio", "uvloop"] = "uvloop"
    # warm festival processes per worker (each holds the voice, ~0.5 GB RSS); sentences queue for them
    festival_procs: int = Field(
        default=1, ge=1, le=16, validation_alias=_env("festival_procs", "VP_TTS_FESTIVAL_PROCS")
    )
    festival_voice: str = Field(
        default="voice_msu_ru_nsh_clunits", validation_alias=_env("festival_voice", "VP_TTS_FESTIVAL_VOICE")
    )
    # one utterance taking longer than this means the process hangs: it is killed and restarted
    festival_timeout_s: float = Field(
        default=10.0, gt=0, validation_alias=_env("festival_timeout_s", "VP_TTS_FESTIVAL_TIMEOUT_S")
    )
    # starting a process and loading the voice (about 0.5 s warm disk, more when cold)
    festival_startup_timeout_s: float = Field(
        default=30.0,
        gt=0,
        validation_alias=_env("festival_startup_timeout_s", "VP_TTS_FESTIVAL_STARTUP_TIMEOUT_S"),
    )
    # warm the festival pool at start, before the instance takes sentences
    festival_preload: bool = Field(
        default=True, validation_alias=_env("festival_preload", "VP_TTS_FESTIVAL_PRELOAD")
    )
    # RHVoice (scripts/install-rhvoice.sh): the default voice and where Debian puts the library and data
    rhvoice_voice: str = Field(
        default="Irina", validation_alias=_env("rhvoice_voice", "VP_TTS_RHVOICE_VOICE")
    )
    rhvoice_library: str = Field(
        default="libRHVoice.so.5", validation_alias=_env("rhvoice_library", "VP_TTS_RHVOICE_LIBRARY")
    )
    rhvoice_data_path: str = Field(
        default="/usr/share/RHVoice", validation_alias=_env("rhvoice_data_path", "VP_TTS_RHVOICE_DATA_PATH")
    )
    rhvoice_config_path: str = Field(
        default="/etc/RHVoice", validation_alias=_env("rhvoice_config_path", "VP_TTS_RHVOICE_CONFIG_PATH")
    )
    # load the engine and the default voice at start (the first sentence then starts in ~3 ms)
    rhvoice_preload: bool = Field(
        default=True, validation_alias=_env("rhvoice_preload", "VP_TTS_RHVOICE_PRELOAD")
    )
    espeak_voice: str = Field(default="ru", validation_alias=_env("espeak_voice", "VP_TTS_ESPEAK_VOICE"))
    # audio is published in chunks of this length (at most 200 ms: the gateway plays as it arrives)
    chunk_ms: int = Field(default=100, ge=20, le=200, validation_alias=_env("chunk_ms", "VP_TTS_CHUNK_MS"))
    # interrupted turn ids are remembered this long so their late sentences are dropped
    interrupt_memory_s: float = 120.0
    # how long cancelling a turn's synthesis may take before we stop waiting for it
    cancel_timeout_s: float = 2.0
