from __future__ import annotations

from voiceplatform.config import ServiceSettings


class GatewayWebSettings(ServiceSettings):
    http_port: int = 8000
    default_robot: str = "pipeline_russian"
    # seed 004: JSON heartbeat messages instead of WebSocket ping/pong, every 45 s
    heartbeat_s: float = 45.0
    # seconds to wait for the client's first message before starting with defaults
    start_timeout_s: float = 2.0
    max_message_bytes: int = 1 << 20
