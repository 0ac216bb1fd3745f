"""deploy/k8s: valid Kubernetes objects (the API's JSON schemas, strict: no unknown field), every service
deployed with probes, drain time, resources and an autoscaler on the load metrics the services publish."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.k8s_manifests import K8S, KUBERNETES_VERSION, REPO, Platform, load_platform
from voiceplatform import load
from voiceplatform.bus import natsconf, permissions
from voiceplatform_devstack.devinfra import nats_server_binary
from vp_recorder import metrics as recorder_metrics

CALL_OWNERS = {"gateway-web", "gateway-fs", "vad", "asr", "realtime"}  # scale on calls owned / capacity
WORK_STAGES = {"prompt-router", "llm", "tts"}  # scale on their consumer's backlog per pod


@pytest.fixture(scope="module")
def platform() -> Platform:
    return load_platform()


def _validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_every_object_is_valid_against_the_kubernetes_schemas(platform: Platform) -> None:
    errors = []
    for obj in platform.objects:
        try:
            _validate(obj)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(map(str, exc.path))
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
    assert not errors, "\n".join(errors)
    kinds = {o["kind"] for o in platform.objects}
    assert kinds >= {"Deployment", "StatefulSet", "Service", "ConfigMap", "Secret", "HorizontalPodAutoscaler"}


def test_the_schemas_catch_a_broken_object(platform: Platform) -> None:
    # the validation above can fail: a misspelt field and a wrong type are both refused
    deployment = platform.of_kind("Deployment")["llm"]
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["terminationGracePeriod"] = 40
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            _validate(broken)


def test_the_kustomization_lists_every_manifest(platform: Platform) -> None:
    listed = set(platform.kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    ignored = (REPO / ".gitignore").read_text()
    assert "deploy/k8s/*.env" in ignored  # the secret files are never committed


def _services() -> dict[str, str]:
    """services/<folder> → its vp_* package."""
    found = {}
    for folder in sorted((REPO / "services").iterdir()):
        packages = [p.name for p in folder.glob("vp_*") if (p / "__init__.py").is_file()]
        if packages:
            found[folder.name] = packages[0]
    return found


def test_every_service_is_a_deployment_logged_in_as_itself(platform: Platform) -> None:
    deployments = platform.of_kind("Deployment")
    assert set(deployments) == set(_services()) == set(permissions.SERVICE_GRANTS)
    for name, package in _services().items():
        container = platform.container(name)
        assert container["command"] == ["python", "-m", package]
        env = platform.env(name)
        assert env["NATS_USER"] == {"value": name}
        ref = env["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "vp-nats-passwords", "key": natsconf.password_env(name)}
        assert env["NATS_URL"] == {"value": "nats://nats:4222"}


def test_probes_ask_the_health_port(platform: Platform) -> None:
    for name in platform.of_kind("Deployment"):
        container = platform.container(name)
        port = int(platform.env(name)["VP_HTTP_PORT"]["value"])
        ports = [{"name": "http", "containerPort": port}]
        if name == "gateway-fs":  # FreeSWITCH's audio streams have a listener of their own
            stream = int(platform.env(name)["VP_FS_STREAM_PORT"]["value"])
            ports.insert(0, {"name": "stream", "containerPort": stream})
            assert platform.env(name)["VP_FS_STREAM_URL"]["value"] == f"ws://$(POD_IP):{stream}/call"
        assert container["ports"] == ports, name
        # ready = taking work (/health is 503 while starting, draining or missing a stage);
        # alive = the event loop answers (/live), so a draining pod is not restarted
        assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}, name
        assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": "http"}, name
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert set(requests) == set(limits) == {"cpu", "memory"}, name
        annotations = platform.of_kind("Deployment")[name]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port), name


def test_grace_period_covers_the_drain(platform: Platform) -> None:
    drain_s = float(platform.of_kind("ConfigMap")["vp-worker-env"]["data"]["VP_DRAIN_TIMEOUT_S"])
    for name, deployment in platform.of_kind("Deployment").items():
        # the service's drain, then the bus drain, each bounded by the drain time, and a margin
        assert platform.env(name)["VP_DRAIN_TIMEOUT_S"] == {"value": f"{drain_s:g}"}, name
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace == 2 * drain_s + 10, name


def test_autoscalers_use_the_load_metrics(platform: Platform) -> None:
    hpas = platform.of_kind("HorizontalPodAutoscaler")
    assert set(hpas) == CALL_OWNERS | WORK_STAGES | {"recorder"}
    gauge = {
        "ratio": load.LOAD_RATIO.describe()[0].name,
        "depth": load.QUEUE_DEPTH.describe()[0].name,
    }
    for name, hpa in hpas.items():
        spec = hpa["spec"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
        assert "replicas" not in platform.of_kind("Deployment")[name]["spec"], f"{name}: the HPA owns it"
        first = spec["metrics"][0]
        if name in CALL_OWNERS:
            assert first["type"] == "Pods" and first["pods"]["metric"]["name"] == gauge["ratio"]
            assert 0 < float(first["pods"]["target"]["averageValue"].rstrip("m")) / 1000 < 1
        elif name == "recorder":
            # the adapter's name for the backlog gauge of the recorder's store consumers
            assert first["type"] == "External"
            assert first["external"]["metric"] == {"name": "vp_recorder_backlog"}
            assert first["external"]["target"]["type"] == "AverageValue"
        else:
            assert first["type"] == "External"
            assert first["external"]["metric"] == {
                "name": gauge["depth"],
                "selector": {"matchLabels": {"stage": name}},
            }
            assert first["external"]["target"]["type"] == "AverageValue"


def test_the_adapter_serves_the_metrics_the_autoscalers_ask_for(platform: Platform) -> None:
    (config_map,) = yaml.safe_load_all((K8S / "prometheus-adapter" / "adapter-config.yaml").read_text())
    _validate(config_map)
    rules = yaml.safe_load(config_map["data"]["config.yaml"])
    served = {
        "Pods": {r["name"]["as"] for r in rules["rules"]},
        "External": {r["name"]["as"] for r in rules["externalRules"]},
    }
    for hpa in platform.of_kind("HorizontalPodAutoscaler").values():
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] in served:
                assert metric[metric["type"].lower()]["metric"]["name"] in served[metric["type"]]
    gauges = {recorder_metrics.BACKLOG.describe()[0].name, recorder_metrics.STORE_UP.describe()[0].name}
    for rule in rules["rules"] + rules["externalRules"]:
        assert re.match(r"^vp_(stage|recorder)_\w+\{namespace!=\"\"", rule["seriesQuery"]), rule
        if "recorder" in rule["seriesQuery"]:  # the recorder's gauges, by the names it exports
            assert set(re.findall(r"vp_recorder_\w+", rule["seriesQuery"] + rule["metricsQuery"])) <= gauges


def test_nats_is_a_three_server_jetstream_cluster(platform: Platform) -> None:
    nats = platform.of_kind("StatefulSet")["nats"]
    assert nats["spec"]["replicas"] == 3
    conf = platform.config_keys("ConfigMap", "vp-nats-config")
    assert conf == {"nats.conf", "auth.conf"}
    text = (K8S / "nats" / "nats.conf").read_text()
    routes = re.findall(r"nats://(nats-\d)\.nats-cluster:6222", text)
    assert routes == [f"nats-{i}" for i in range(3)]
    assert nats["spec"]["serviceName"] == "nats-cluster" and "nats-cluster" in platform.of_kind("Service")
    assert re.search(r"^jetstream\s*\{", text, re.MULTILINE) and "include ./auth.conf" in text
    # Go's scheduler threads follow the container's CPU limit (an old Go reads the node's cores)
    [container] = nats["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["GOMAXPROCS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    assert container["resources"]["limits"]["cpu"]


def test_committed_auth_conf_is_the_generated_one() -> None:
    committed = (K8S / "nats" / "auth.conf").read_text()
    assert committed == natsconf.authorization_config(), (
        "regenerate: vp nats-config --authorization-only --out deploy/k8s/nats/auth.conf"
    )


def test_the_generator_command_writes_it(tmp_path: Path) -> None:
    out = tmp_path / "auth.conf"
    assert natsconf.main(["--authorization-only", "--out", str(out)]) == 0
    assert out.read_text() == (K8S / "nats" / "auth.conf").read_text()


def _check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(nats_server_binary()), "-c", str(K8S / "nats" / "nats.conf"), "-t"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_nats_server_accepts_the_cluster_config_with_every_password_and_not_without() -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(natsconf.PASSWORD_ENV_PREFIX)}
    base["POD_NAME"] = "nats-0"
    passwords = {natsconf.password_env(u): natsconf.new_password() for u in permissions.USERS}
    ok = _check({**base, **passwords})
    assert ok.returncode == 0, ok.stderr
    missing = dict(passwords)
    missing.pop(natsconf.password_env("llm"))
    refused = _check({**base, **missing})
    assert refused.returncode != 0 and "NATS_PASSWORD_LLM" in refused.stderr


def test_secret_files_are_documented(platform: Platform) -> None:
    for gen in platform.kustomization["secretGenerator"]:
        for env in gen["envs"]:
            if env != "nats-passwords.env":  # made by vp nats-config --env-file
                assert (K8S / f"{env}.example").is_file(), env


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl (its kustomize builds deploy/k8s)")
def test_kustomize_builds_it_with_the_secret_files_in_place(tmp_path: Path) -> None:
    build = tmp_path / "k8s"
    shutil.copytree(K8S, build)
    natsconf.add_missing_passwords(build / "nats-passwords.env")
    for example in build.glob("*.env.example"):
        shutil.copy(example, build / example.name.removesuffix(".example"))
    out = subprocess.run(
        ["kubectl", "kustomize", str(build)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    built = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
    for obj in built:
        _validate(obj)
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "voice-platform", obj["metadata"]["name"]
    names = {(o["kind"], o["metadata"]["name"]) for o in built}
    # generated names carry a content hash, and every reference to them was rewritten
    secrets = {n for kind, n in names if kind == "Secret"}
    assert len(secrets) == 3 and all(re.match(r"^vp-[a-z-]+-[a-z0-9]{10}$", n) for n in secrets)
    text = out.stdout
    for plain in ("name: vp-nats-passwords\n", "name: vp-stores\n", "name: vp-nats-config\n"):
        assert plain not in text
