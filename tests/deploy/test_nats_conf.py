"""deploy/compose/nats.conf is the generator's output, valid for nats-server, and compose gives every
service its own user."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from voiceplatform.bus import natsconf, permissions
from voiceplatform_devstack.devinfra import nats_server_binary

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
INFRA = {"nats", "postgres", "mongo", "redis", "freeswitch"}


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return dict(yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())["services"])


def test_committed_nats_conf_is_the_generated_one() -> None:
    committed = (COMPOSE_DIR / "nats.conf").read_text()
    assert committed == natsconf.compose_config(), "regenerate: vp nats-config --out deploy/compose/nats.conf"


def _check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(nats_server_binary()), "-c", str(COMPOSE_DIR / "nats.conf"), "-t"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_nats_server_accepts_it_with_every_password_and_not_without() -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(natsconf.PASSWORD_ENV_PREFIX)}
    passwords = {natsconf.password_env(u): natsconf.new_password() for u in permissions.USERS}
    ok = _check({**base, **passwords})
    assert ok.returncode == 0, ok.stderr
    missing = dict(passwords)
    missing.pop(natsconf.password_env("tts"))
    refused = _check({**base, **missing})
    assert refused.returncode != 0 and "NATS_PASSWORD_TTS" in refused.stderr


def test_every_service_logs_in_as_itself(services: dict[str, dict[str, Any]]) -> None:
    workers = {name for name in services if name not in INFRA}
    assert workers == set(permissions.SERVICE_GRANTS)
    for name in workers:
        env = services[name]["environment"]
        assert env["NATS_USER"] == name
        assert env["NATS_PASSWORD"].startswith("${" + natsconf.password_env(name) + ":?"), name


def test_the_nats_server_gets_every_password(services: dict[str, dict[str, Any]]) -> None:
    env = services["nats"]["environment"]
    assert set(env) == {natsconf.password_env(u) for u in permissions.USERS}
    for name, value in env.items():
        assert value.startswith("${" + name + ":?"), name


def test_env_file_gets_a_password_per_user_and_store_once(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("VP_FS_ESL_PASSWORD=kept")
    added = natsconf.add_missing_passwords(env_file)
    assert set(added) == {natsconf.password_env(u) for u in permissions.USERS} | {
        "POSTGRES_PASSWORD",
        "REDIS_PASSWORD",
    }
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    first = env_file.read_text()
    assert first.startswith("VP_FS_ESL_PASSWORD=kept\n")
    assert natsconf.add_missing_passwords(env_file) == []
    assert env_file.read_text() == first


def test_compose_stores_refuse_to_start_without_their_passwords(services: dict[str, dict[str, Any]]) -> None:
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert "--requirepass" in services["redis"]["command"]
    assert services["redis"]["command"][-1].startswith("${REDIS_PASSWORD:?")
    recorder = services["recorder"]["environment"]
    assert (
        "${POSTGRES_PASSWORD:?" in recorder["POSTGRES_DSN"] and "${REDIS_PASSWORD:?" in recorder["REDIS_URL"]
    )
