"""deploy/k8s read the way kustomize assembles it: the listed manifests plus the generated ConfigMaps
and Secrets (their keys from the committed files: nats/*.conf, *.env.example, and the NATS users)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from voiceplatform.bus import natsconf, permissions

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
# validated against the schemas of this Kubernetes release (kubernetes-validate ships them)
KUBERNETES_VERSION = "1.30"


def secret_keys(env_file: str) -> list[str]:
    """The keys of a secretGenerator's env file: nats-passwords.env is `vp nats-config --env-file`'s
    output, the others have a committed .example."""
    if env_file == "nats-passwords.env":
        return [natsconf.password_env(u) for u in permissions.USERS] + list(natsconf.STORE_PASSWORD_ENVS)
    keys = []
    for line in (K8S / f"{env_file}.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            keys.append(line.split("=", 1)[0].strip())
    return keys


@dataclass
class Platform:
    kustomization: dict[str, Any]
    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in self.objects if o["kind"] == kind}

    def config_keys(self, kind: str, name: str) -> set[str]:
        obj = self.of_kind(kind)[name]
        return set(obj.get("data", {})) | set(obj.get("stringData", {}))

    def container(self, deployment: str) -> dict[str, Any]:
        (container,) = self.of_kind("Deployment")[deployment]["spec"]["template"]["spec"]["containers"]
        return dict(container)

    def env(self, deployment: str) -> dict[str, dict[str, Any]]:
        """Every variable the container gets: name → {"value": …} or {"valueFrom": …}; envFrom first,
        then env (which wins, as in Kubernetes)."""
        container = self.container(deployment)
        out: dict[str, dict[str, Any]] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                data = self.of_kind("ConfigMap")[source["configMapRef"]["name"]]["data"]
                out.update({k: {"value": v} for k, v in data.items()})
            else:
                name = source["secretRef"]["name"]
                keys = self.config_keys("Secret", name)
                out.update({k: {"valueFrom": {"secretKeyRef": {"name": name, "key": k}}} for k in keys})
        for var in container.get("env", []):
            out[var["name"]] = {k: v for k, v in var.items() if k != "name"}
        return out


def load_platform() -> Platform:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        objects += [doc for doc in yaml.safe_load_all((K8S / resource).read_text()) if doc]
    for gen in kustomization.get("configMapGenerator", []):
        data = {Path(f).name: (K8S / f).read_text() for f in gen["files"]}
        objects.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data}
        )
    for gen in kustomization.get("secretGenerator", []):
        keys = [k for env in gen["envs"] for k in secret_keys(env)]
        string_data = dict.fromkeys(keys, "x")
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": gen["name"]},
                "stringData": string_data,
            }
        )
    return Platform(kustomization, objects)
