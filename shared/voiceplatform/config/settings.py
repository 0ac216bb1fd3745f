"""Process settings, read once at start from the environment and the root ``.env``.

Each service subclasses ``ServiceSettings`` to add its own fields. Secrets are ``SecretStr`` so they
never print.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VP_", env_file=".env", extra="ignore")

    nats_url: str = Field(default="nats://127.0.0.1:4222", validation_alias="NATS_URL")
    # the service's NATS user (voiceplatform.bus.permissions); none: connect anonymously
    nats_user: str | None = Field(default=None, validation_alias="NATS_USER")
    nats_password: SecretStr | None = Field(default=None, validation_alias="NATS_PASSWORD")
    # TLS to NATS (multi-host): the CA that signed the server's certificate; a client certificate
    # and key when the server verifies clients
    nats_tls_ca: Path | None = Field(default=None, validation_alias="NATS_TLS_CA")
    nats_tls_cert: Path | None = Field(default=None, validation_alias="NATS_TLS_CERT")
    nats_tls_key: Path | None = Field(default=None, validation_alias="NATS_TLS_KEY")
    # copies of each JetStream stream and KV bucket this service creates (VP_JS_REPLICAS): 3 on a
    # 3-node NATS cluster (docs/deploy-cluster.md), so losing one node loses no record; 1 on one server
    js_replicas: int = Field(default=1, ge=1, le=5)
    robots_dir: Path = Field(default=Path("robots"), validation_alias="ROBOTS_DIR")
    postgres_dsn: SecretStr = Field(
        default=SecretStr("postgresql://postgres@127.0.0.1:5432/postgres"), validation_alias="POSTGRES_DSN"
    )
    redis_url: SecretStr = Field(default=SecretStr("redis://127.0.0.1:6379/0"), validation_alias="REDIS_URL")
    mongo_uri: SecretStr | None = Field(default=None, validation_alias="MONGO_URI")
    # health + metrics HTTP port; 0 picks a free port (printed in the start-up log line)
    http_port: int = 0
    http_host: str = "127.0.0.1"
    # whether the HTTP server accepts permessage-deflate on WebSockets (gateway-fs turns it off)
    ws_per_message_deflate: bool = True
    # the asyncio event loop: the standard one, or uvloop (libuv; uvicorn[standard] installs it),
    # which the services on the phone path (gateway-fs, vad, asr, prompt-router, llm, tts) use by default
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"
    instance_id: str = Field(default_factory=_default_instance_id)
    # calls one instance of a stateful stage accepts before it rejects assignments
    max_calls: int = 50
    drain_timeout_s: float = 10.0
    # per-turn work (router, llm, tts; see bus/work.py): a message taken by an instance that stops
    # acknowledging progress for this long goes to another instance; at most this many deliveries;
    # work older than work_stale_s (a backlog after an outage) is dropped, not answered late
    work_ack_wait_s: float = Field(default=2.0, gt=0.2)
    work_max_deliver: int = Field(default=3, ge=1)
    work_stale_s: float = Field(default=15.0, gt=0)
    log_level: str = "INFO"
    # traces (voiceplatform.tracing; docs/operations.md#traces-opentelemetry): off without an endpoint
    otel_exporter_otlp_endpoint: str = Field(default="", validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    otel_exporter_otlp_traces_endpoint: str = Field(
        default="", validation_alias="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    # share of turns traced, decided on the turn's trace id (the same turns in every service)
    trace_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    # call recordings (one stereo WAV per call): the gateways write them here, the recorder serves
    # and deletes them (docs/operations.md, "Call recordings"); `vp up` sets <workdir>/data/recordings
    recordings_dir: Path = Path(".vp/data/recordings")
