"""`vp up`'s infrastructure: embedded NATS, PostgreSQL and Redis, each with a generated password,
and every service given its own NATS login (nothing to configure)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import asyncpg
import nats
import nats.errors
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from voiceplatform.bus.auth import NatsAuth
from voiceplatform.bus.permissions import SERVICE_GRANTS
from voiceplatform.cli.up import SERVICES, Infra
from voiceplatform.config.settings import ServiceSettings
from voiceplatform.credentials import CREDENTIALS_FILE


async def test_embedded_infrastructure_is_closed_and_services_get_their_logins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NATS_URL", "POSTGRES_DSN", "REDIS_URL", "NATS_USER", "NATS_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    infra = Infra(tmp_path)
    try:
        infra.start()
        creds_file = tmp_path / CREDENTIALS_FILE
        assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
        assert {name for name, _ in SERVICES} == set(infra.service_env) == set(SERVICE_GRANTS)
        saved = json.loads(creds_file.read_text())
        assert saved["postgres"] in infra.env["POSTGRES_DSN"] and saved["redis"] in infra.env["REDIS_URL"]

        url = infra.env["NATS_URL"]
        with pytest.raises((nats.errors.Error, OSError)):
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5)
        for name, _ in SERVICES:  # each service connects the way run_service does, from its env
            for key, value in {**infra.env, **infra.service_env[name]}.items():
                monkeypatch.setenv(key, value)
            settings = ServiceSettings()
            nc = await nats.connect(url, max_reconnect_attempts=0, **NatsAuth.of(settings).options())
            await nc.close()

        conn = await asyncpg.connect(infra.env["POSTGRES_DSN"])
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
        client = aioredis.from_url(infra.env["REDIS_URL"])
        assert await client.ping()
        await client.aclose()
        anonymous = aioredis.from_url(infra.env["REDIS_URL"].replace(f":{saved['redis']}@", ""))
        with pytest.raises(redis.exceptions.AuthenticationError):
            await anonymous.get("k")
        await anonymous.aclose()
    finally:
        infra.stop()
