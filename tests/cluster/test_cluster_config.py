"""The committed cluster node configs and the replicas setting (no namespaces needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from voiceplatform.bus.jetstream import StreamSpec
from voiceplatform.bus.natsconf import cluster_node_config, main, password_env
from voiceplatform.config import ServiceSettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "cluster"
HOSTS = ("nats-1", "nats-2", "nats-3")


@pytest.mark.parametrize("node", [1, 2, 3])
def test_committed_node_configs_are_the_generated_ones(node):
    expected = cluster_node_config(HOSTS, node, lambda user: "$" + password_env(user))
    assert (DEPLOY / f"nats-{node}.conf").read_text() == expected


def test_a_node_config_names_itself_and_routes_to_every_node(tmp_path):
    out = tmp_path / "nats.conf"
    assert main(["--cluster-hosts", "a,b,c", "--node", "2", "--out", str(out)]) == 0
    text = out.read_text()
    assert 'server_name: "vp-nats-2"' in text
    assert '"nats-route://a:6222", "nats-route://b:6222", "nats-route://c:6222"' in text
    assert "$NATS_PASSWORD_GATEWAY_WEB" in text
    with pytest.raises(ValueError):
        cluster_node_config(("a", "b"), 3, str)


def test_replicas_reach_the_stream_config(monkeypatch):
    assert StreamSpec("S", ("s.>",), 60.0).config().num_replicas == 1
    assert StreamSpec("S", ("s.>",), 60.0, replicas=3).config().num_replicas == 3
    monkeypatch.setenv("VP_JS_REPLICAS", "3")
    assert ServiceSettings().js_replicas == 3
    monkeypatch.setenv("VP_JS_REPLICAS", "0")
    with pytest.raises(ValidationError):
        ServiceSettings()
