"""Process settings (env) and robot configuration (robot folder, priority chain)."""

from voiceplatform.config.robot import (
    AsrConfig,
    BargeInConfig,
    DeadlinesConfig,
    LlmConfig,
    RealtimeConfig,
    RobotConfig,
    RobotConfigError,
    RouterConfig,
    TtsConfig,
    TurnsConfig,
    VadConfig,
    load_robot,
)
from voiceplatform.config.robot_registry import RobotRegistry
from voiceplatform.config.settings import ServiceSettings

__all__ = [
    "AsrConfig",
    "BargeInConfig",
    "DeadlinesConfig",
    "LlmConfig",
    "RealtimeConfig",
    "RobotConfig",
    "RobotConfigError",
    "RobotRegistry",
    "RouterConfig",
    "ServiceSettings",
    "TtsConfig",
    "TurnsConfig",
    "VadConfig",
    "load_robot",
]
