"""Process settings, read once at start from the environment and the root ``.env``.

Each service subclasses ``ServiceSettings`` to add its own fields. Secrets are ``SecretStr`` so they
never print.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

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
    robots_dir: Path = Field(default=Path("robots"), validation_alias="ROBOTS_DIR")
    postgres_dsn: SecretStr = Field(
        default=SecretStr("postgresql://postgres@127.0.0.1:5432/postgres"), validation_alias="POSTGRES_DSN"
    )
    redis_url: SecretStr = Field(default=SecretStr("redis://127.0.0.1:6379/0"), validation_alias="REDIS_URL")
    mongo_uri: SecretStr | None = Field(default=None, validation_alias="MONGO_URI")
    # health + metrics HTTP port; 0 picks a free port (printed in the start-up log line)
    http_port: int = 0
    http_host: str = "127.0.0.1"
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
    # call recordings (one stereo WAV per call): the gateways write them here, the recorder serves
    # and deletes them (docs/operations.md, "Call recordings"); `vp up` sets <workdir>/data/recordings
    recordings_dir: Path = Path(".vp/data/recordings")
