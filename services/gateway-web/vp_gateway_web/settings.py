from __future__ import annotations

from pydantic import Field, SecretStr

from voiceplatform.config import ServiceSettings


class GatewayWebSettings(ServiceSettings):
    """gateway-web settings (env ``VP_<NAME>``); ``max_calls`` (inherited) caps concurrent calls here."""

    http_port: int = 8000
    default_robot: str = "pipeline_russian"
    # seed 004: JSON heartbeat messages instead of WebSocket ping/pong, every 45 s
    heartbeat_s: float = 45.0
    # seconds to wait for the client's first message before starting with defaults
    start_timeout_s: float = 2.0
    max_message_bytes: int = 1 << 20
    # ---- call tokens (docs/operations.md, "gateway-web: tokens and limits") -------------------------
    # key an embedding site sends to POST /tokens (Bearer); unset: that endpoint is off (`vp up` sets one)
    web_api_key: SecretStr | None = None
    # HMAC key that signs call tokens; unset: a random one per process (one gateway instance)
    web_token_secret: SecretStr | None = None
    call_token_ttl_s: float = Field(default=60.0, gt=0)
    # POST /page-token: the bundled page (an allowed Origin) gets a token without the key
    page_tokens: bool = True
    # ---- who may connect ----------------------------------------------------------------------------
    # extra allowed Origins, comma-separated ("https://shop.example,https://x.example"); the gateway's
    # own origin is always allowed, localhost ones while allow_localhost_origins is on
    allowed_origins: str = ""
    allow_localhost_origins: bool = True
    # concurrent calls per robot on this gateway; 0: only max_calls applies
    max_calls_per_robot: int = Field(default=0, ge=0)
    # ---- limits on a call ---------------------------------------------------------------------------
    idle_timeout_s: float = Field(default=30.0, gt=0)  # no caller audio this long → ended "idle_timeout"
    max_call_s: float = Field(default=900.0, gt=0)  # the gateway's cap; the robot may set a shorter one
    max_text_bytes: int = Field(default=8192, ge=64)  # one JSON text frame
    max_json_depth: int = Field(default=8, ge=1)
    audio_burst_s: float = Field(default=3.0, gt=0)  # caller audio ahead of real time that is still taken
    # a dropped socket may come back with its resume token within this many seconds; 0: no reconnect
    reconnect_grace_s: float = Field(default=10.0, ge=0)
