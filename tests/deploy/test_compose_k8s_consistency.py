"""deploy/compose and deploy/k8s describe the same platform: the same services with the same image and
command, the same environment variable names (and the same literal values), the same health port, the
same NATS user, the same grace period; a compose secret is a Kubernetes Secret reference."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.deploy.k8s_manifests import REPO, Platform, load_platform

COMPOSE = REPO / "deploy" / "compose" / "docker-compose.yml"
# run outside the cluster on Kubernetes (managed stores, FreeSWITCH next to the SIP trunk): their
# addresses come from the vp-stores Secret and the ExternalName Service freeswitch
EXTERNAL_ON_K8S = {"postgres", "mongo", "redis", "freeswitch"}
# deliberate differences, each with its reason
K8S_VALUE_DIFFERS = {
    # outbound streams must come back to the pod that dialled, not to any pod behind the Service
    ("gateway-fs", "VP_FS_STREAM_URL"): "ws://$(POD_IP):8090/call",
}
# a variable named like this is a Kubernetes Secret reference, never a literal in a manifest
SECRET_NAME = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|DSN)$")
_REQUIRED = re.compile(r"^\$\{(\w+):\?.*\}$")
_DEFAULTED = re.compile(r"^\$\{(\w+):-(.*)\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, dict[str, Any]]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


@pytest.fixture(scope="module")
def k8s() -> Platform:
    return load_platform()


def _apps(compose: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The platform's own services: built from the repository's Dockerfile."""
    return {name: svc for name, svc in compose.items() if svc.get("build", {}).get("context") == "../.."}


def _k8s_env(k8s: Platform, name: str) -> dict[str, dict[str, Any]]:
    # values the pod learns about itself (downward API) have no compose counterpart
    return {k: v for k, v in k8s.env(name).items() if "fieldRef" not in v.get("valueFrom", {})}


def test_same_services(compose: dict[str, dict[str, Any]], k8s: Platform) -> None:
    deployments = set(k8s.of_kind("Deployment"))
    assert set(_apps(compose)) == deployments
    infra = set(compose) - deployments
    assert infra == {"nats"} | EXTERNAL_ON_K8S
    assert "nats" in k8s.of_kind("StatefulSet") and "freeswitch" in k8s.of_kind("Service")


def test_same_images_and_commands(compose: dict[str, dict[str, Any]], k8s: Platform) -> None:
    for name, svc in _apps(compose).items():
        container = k8s.container(name)
        assert container["image"] == svc["image"], name
        assert container["command"] == svc["command"], name
    nats = k8s.of_kind("StatefulSet")["nats"]["spec"]["template"]["spec"]["containers"][0]
    assert nats["image"] == compose["nats"]["image"]
    assert nats["args"] == compose["nats"]["command"]
    assert set(compose["nats"]["environment"]) <= k8s.config_keys("Secret", "vp-nats-passwords")


def test_same_environment(compose: dict[str, dict[str, Any]], k8s: Platform) -> None:
    for name, svc in _apps(compose).items():
        ours, theirs = _k8s_env(k8s, name), {k: str(v) for k, v in svc["environment"].items()}
        assert set(ours) == set(theirs), (
            f"{name}: only compose {set(theirs) - set(ours)}, only k8s {set(ours) - set(theirs)}"
        )
        for var, value in theirs.items():
            on_k8s = ours[var]
            required, defaulted = _REQUIRED.match(value), _DEFAULTED.match(value)
            secret = "secretKeyRef" in on_k8s.get("valueFrom", {})
            if (name, var) in K8S_VALUE_DIFFERS:
                assert on_k8s == {"value": K8S_VALUE_DIFFERS[(name, var)]}, (name, var)
            elif SECRET_NAME.search(var) or required or (not defaulted and "${" in value):
                # a password, key, or a URL with one inside: a Secret on Kubernetes, never a literal
                assert secret, f"{name}: {var} must come from a Secret"
            elif defaulted:
                assert on_k8s == {"value": defaulted.group(2)} or secret, (name, var)
            else:
                assert on_k8s == {"value": value} or secret, f"{name}: {var} {on_k8s} != {value!r}"


def test_same_health_port_and_nats_user(compose: dict[str, dict[str, Any]], k8s: Platform) -> None:
    for name, svc in _apps(compose).items():
        env = k8s.env(name)
        port = svc["environment"]["VP_HTTP_PORT"]
        assert env["VP_HTTP_PORT"] == {"value": port}, name
        assert f"127.0.0.1:{port}/health" in " ".join(svc["healthcheck"]["test"]), name
        assert env["NATS_USER"] == {"value": svc["environment"]["NATS_USER"]} == {"value": name}
        compose_password = _REQUIRED.match(svc["environment"]["NATS_PASSWORD"])
        assert compose_password is not None
        assert env["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == compose_password.group(1), name


def test_same_grace_period(compose: dict[str, dict[str, Any]], k8s: Platform) -> None:
    for name, svc in _apps(compose).items():
        grace = k8s.of_kind("Deployment")[name]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert svc["stop_grace_period"] == f"{grace}s", name
        assert k8s.env(name)["VP_DRAIN_TIMEOUT_S"] == {"value": svc["environment"]["VP_DRAIN_TIMEOUT_S"]}
