"""gateway-fs settings (env ``VP_*``, read once at start).

The ESL password has no usable default: the stock ``ClueCon`` is refused unless
``VP_FS_ESL_ALLOW_DEFAULT_PASSWORD=true`` (a developer's own FreeSWITCH on loopback). The stream
secret ``VP_FS_STREAM_SECRET`` (voiceplatform.phone_stream) is required too: no stream is taken without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from voiceplatform.config import ServiceSettings
from voiceplatform.phone_stream import secret_problem

STOCK_PASSWORD = "ClueCon"


class GatewayFsSettings(ServiceSettings):
    # every caller frame passes through this service: uvloop halves the event loop's share of it
    event_loop: Literal["asyncio", "uvloop"] = "uvloop"
    # mod_audio_stream connects to ws://<host>:<fs_stream_port>/call/<uuid> (stream_socket.py: a
    # listener of its own, picows); /health, /metrics and /outbound are on http_port
    fs_stream_port: int = 8090
    http_port: int = 8091
    fs_esl_host: str = "127.0.0.1"
    fs_esl_port: int = 8021
    fs_esl_password: SecretStr = SecretStr("")
    fs_esl_allow_default_password: bool = False
    # the per-deployment key FreeSWITCH's dialplan puts in the stream URL (?key=...): required
    fs_stream_secret: SecretStr = SecretStr("")
    # a stream for a channel not yet announced on the Event Socket waits this long for the event,
    # then FreeSWITCH is asked (uuid_dump); a channel it does not know is refused
    fs_channel_wait_s: float = Field(default=1.0, gt=0, le=10)
    # one ESL api command (uuid_broadcast, uuid_break, ...) waits this long for FreeSWITCH's answer
    fs_esl_command_timeout_s: float = Field(default=2.0, gt=0)
    # reconnect back-off doubles from 0.1 s up to this cap
    fs_esl_reconnect_max_s: float = Field(default=2.0, gt=0)
    # calls cannot speak while the ESL is down: after this long they end with reason esl_unavailable
    fs_esl_outage_hangup_s: float = Field(default=15.0, gt=0)
    # robot routing: robot key of the metadata → robots' phone_numbers → these routes → default
    fs_routes: str = ""  # "7000=pipeline_russian,7001=topic_prompts_russian"
    fs_default_robot: str = ""
    # the stream's rate when the metadata does not say ("rate": 8000|16000): the dialplan's 8k/16k
    fs_sample_rate: int = 8000
    fs_recordings_dir: Path = Path("recordings")
    # synthesized greetings of robots without greeting.wav (default: a temporary folder per process)
    fs_greeting_cache_dir: Path | None = None
    # seconds to wait for the metadata text frame after the WebSocket opens
    fs_metadata_timeout_s: float = Field(default=2.0, gt=0)
    # caller audio that arrives before the metadata (mod_audio_stream sends what it queued during
    # the handshake first) is held, in order, up to this many frames while the metadata is awaited
    fs_early_audio_max_frames: int = Field(default=50, ge=1, le=500)
    # robot audio segments pushed to FreeSWITCH (see sink.py for the arithmetic behind the numbers)
    fs_lead_frames: int = Field(default=25, ge=2, le=100)
    fs_first_segment_ms: int = Field(default=160, ge=20, le=2000)
    fs_segment_ms: int = Field(default=400, ge=20, le=2000)
    # how segments are queued on the channel: "execute" (sendmsg + playback, back to back) or
    # "broadcast" (uuid_broadcast: 100 ms lead before every file; kept to measure against)
    fs_playback: Literal["execute", "broadcast"] = "execute"
    # a file whose PLAYBACK_STOP never came counts as over this long after its audio would have ended
    fs_playback_stop_grace_s: float = Field(default=1.0, gt=0, le=30)
    # also send the call's JSON events (call.started, turn.metrics, ...) as text frames: FreeSWITCH
    # raises them as mod_audio_stream::json events, where dialplan scripts and `vp call --phone` see them
    fs_forward_events: bool = True
    max_message_bytes: int = 1 << 16
    # caller frames of all calls go to NATS together every this many ms (one socket write for many
    # frames; voiceplatform.gateway.frame_outbox); 0: each frame at once
    fs_audio_batch_ms: float = Field(default=5.0, ge=0, le=20)
    # caller frames per audio.chunk message: 1 (every receiver reads it), or 2-5 (audio.chunk v2:
    # fewer messages for NATS, vad and asr to handle; each frame up to (n-1) x 20 ms later; needs vad,
    # asr and realtime instances that read v2, so upgrade them before the gateway)
    fs_frames_per_message: int = Field(default=1, ge=1, le=5)
    # ---- outbound calls (dialer.py, outbound_api.py) ----
    # bearer key of /outbound/*: unset, every request is refused
    fs_dial_api_key: SecretStr = SecretStr("")
    # FreeSWITCH endpoint of a dialled number; {gateway} is VP_FS_DIAL_GATEWAY (a sofia gateway)
    fs_dial_endpoint: str = "sofia/gateway/{gateway}/{number}"
    fs_dial_gateway: str = "carrier"
    fs_dial_caller_id: str = ""
    fs_originate_timeout_s: float = Field(default=30.0, gt=0, le=300)
    # attempts in flight (dialling or talking) over all campaigns of this gateway
    fs_dial_max_in_flight: int = Field(default=50, ge=1, le=5000)
    # where FreeSWITCH opens an answered outbound call's stream (this gateway, as FreeSWITCH reaches it)
    fs_stream_url: str = "ws://gateway-fs:8090/call"


def password_problem(settings: GatewayFsSettings) -> str | None:
    """Why the configured ESL password must not be used, or None (the value is never returned)."""
    password = settings.fs_esl_password.get_secret_value()
    if not password:
        return "VP_FS_ESL_PASSWORD is not set"
    if password == STOCK_PASSWORD and not settings.fs_esl_allow_default_password:
        return (
            "VP_FS_ESL_PASSWORD is FreeSWITCH's stock password; set your own "
            "(or VP_FS_ESL_ALLOW_DEFAULT_PASSWORD=true for a private development FreeSWITCH)"
        )
    return None


def stream_secret_problem(settings: GatewayFsSettings) -> str | None:
    """Why the configured stream secret must not be used, or None (the value is never returned)."""
    return secret_problem(settings.fs_stream_secret.get_secret_value())


def parse_routes(text: str) -> dict[str, str]:
    """``"7000=bot_a, 7001=bot_b"`` → ``{"7000": "bot_a", "7001": "bot_b"}``; bad items raise ValueError."""
    routes: dict[str, str] = {}
    for item in text.replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        number, sep, robot = item.partition("=")
        if not sep or not number.strip() or not robot.strip():
            raise ValueError(f"VP_FS_ROUTES item {item!r} is not NUMBER=ROBOT")
        routes[number.strip()] = robot.strip()
    return routes
