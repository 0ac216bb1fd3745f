"""Realtime providers by name: ``yandex`` (AI Studio Realtime API) and ``openai`` (OpenAI Realtime).

Both speak the same event protocol (``openai_protocol``); they differ in endpoint, auth header and
small session details. Keys come only from env (the robot's ``.env`` or the process), by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from voiceplatform.config import RobotConfig
from voiceplatform.logging import register_secret
from voiceplatform.providers import ProviderError
from voiceplatform.providers.base import ProviderBase, ProviderContext
from voiceplatform.providers.realtime import RealtimeConnection, RealtimeSessionConfig

from .openai_protocol import OpenAiRealtimeConnection, session_update

YANDEX_URL = "wss://ai.api.cloud.yandex.net/v1/realtime/openai"
YANDEX_MODEL = "speech-realtime-250923"
OPENAI_URL = "wss://api.openai.com/v1/realtime"
OPENAI_MODEL = "gpt-realtime"
OPENAI_TRANSCRIPTION_MODEL = "gpt-4o-mini-transcribe"


@dataclass
class RealtimeEndpoint(ProviderBase):
    """A realtime provider: one endpoint per robot (its keys), one connection per call."""

    name: str
    url: str
    headers: dict[str, str]
    ga_type: bool
    modalities: list[str]
    timeout_s: float
    transcription_model: str = ""

    @classmethod
    def from_context(cls, ctx: ProviderContext) -> RealtimeEndpoint:
        robot = ctx.require_robot("realtime")
        return _openai(robot) if robot.settings.realtime.provider == "openai" else _yandex(robot)

    async def connect(self, config: RealtimeSessionConfig) -> RealtimeConnection:
        update = session_update(
            config,
            ga_type=self.ga_type,
            modalities=self.modalities,
            transcription_model=self.transcription_model,
        )
        return await OpenAiRealtimeConnection.open(
            self.name, self.url, self.headers, update, config.history, timeout_s=self.timeout_s
        )


def _yandex(robot: RobotConfig) -> RealtimeEndpoint:
    cfg = robot.settings.realtime
    api_key, iam_token = robot.secret("YANDEX_API_KEY"), robot.secret("YANDEX_IAM_TOKEN")
    folder = robot.secret("YANDEX_FOLDER_ID") or ""
    if not (api_key or iam_token):
        raise ProviderError("yandex", "no YANDEX_API_KEY or YANDEX_IAM_TOKEN in env", retryable=False)
    model = cfg.model or YANDEX_MODEL
    if not model.startswith("gpt://"):
        if not folder:
            raise ProviderError(
                "yandex", "no YANDEX_FOLDER_ID in env (needed for the model URI)", retryable=False
            )
        model = f"gpt://{folder}/{model}"
    register_secret(api_key)
    register_secret(iam_token)
    # the docs' sample sends "api-key <key>"; the scheme is probably case-insensitive [T]
    auth = f"api-key {api_key}" if api_key else f"Bearer {iam_token}"
    return RealtimeEndpoint(
        name="yandex",
        url=f"{cfg.url or YANDEX_URL}?{urlencode({'model': model})}",
        headers={"Authorization": auth},
        ga_type=False,  # the official sample omits "type": "realtime"
        modalities=["text", "audio"],
        timeout_s=cfg.connect_timeout_s,
    )


def _openai(robot: RobotConfig) -> RealtimeEndpoint:
    cfg = robot.settings.realtime
    api_key = robot.secret("OPENAI_API_KEY")
    if not api_key:
        raise ProviderError("openai", "no OPENAI_API_KEY in env", retryable=False)
    register_secret(api_key)
    return RealtimeEndpoint(
        name="openai",
        url=f"{cfg.url or OPENAI_URL}?{urlencode({'model': cfg.model or OPENAI_MODEL})}",
        headers={"Authorization": f"Bearer {api_key}"},
        ga_type=True,
        modalities=["audio"],  # the audio transcript comes with it
        timeout_s=cfg.connect_timeout_s,
        transcription_model=OPENAI_TRANSCRIPTION_MODEL,
    )


def build_endpoint(robot: RobotConfig) -> RealtimeEndpoint:
    """The robot's realtime provider (``realtime.provider``: ``openai``, else ``yandex``)."""
    return RealtimeEndpoint.from_context(ProviderContext(robot=robot))
