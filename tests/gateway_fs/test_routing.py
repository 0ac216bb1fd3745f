"""Which robot answers: metadata, dialed numbers, VP_FS_ROUTES, default; and the settings checks."""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr

from voiceplatform.config import RobotRegistry
from vp_gateway_fs.routing import RobotRouter, RoutingError, StreamMeta, parse_metadata
from vp_gateway_fs.settings import GatewayFsSettings, parse_routes, password_problem


@pytest.fixture
def registry(tmp_path):
    robots = tmp_path / "robots"
    for name, numbers in (("alpha", ["+7 (495) 000-70-00"]), ("beta", []), ("gamma", ["7001"])):
        (robots / name).mkdir(parents=True)
        config = {"llm": {"provider": "openai"}, "phone_numbers": numbers}
        (robots / name / "config.json").write_text(json.dumps(config))
    (robots / "broken").mkdir()
    (robots / "broken" / "config.json").write_text('{"mode": ')
    return RobotRegistry(robots)


def test_metadata_forms() -> None:
    meta = parse_metadata(
        '{"robot": "alpha", "dnis": "7000", "caller": "79990001122", "uuid": "u-1", "rate": 16000}'
    )
    assert meta == StreamMeta(robot="alpha", dnis="7000", caller="79990001122", uuid="u-1", rate=16000)
    assert parse_metadata("7000").dnis == "7000"
    assert parse_metadata(" +7 495 000 70 00 ").dnis == "+7 495 000 70 00"
    assert parse_metadata("7001\n").dnis == "7001"
    assert parse_metadata('{"destination_number": 7002, "caller_id_number": "100"}').dnis == "7002"
    for bad in ("", "hello", "[1, 2]", '{"rate": 11025}', "true", "{not json"):
        with pytest.raises(RoutingError) as err:
            parse_metadata(bad)
        assert err.value.reason == "bad_metadata"


def test_route_priority(registry) -> None:
    router = RobotRouter(registry, parse_routes("7000=beta, 7005=beta"), default_robot="gamma")
    assert router.route(StreamMeta(robot="beta", dnis="7001"))[0].name == "beta"
    robot, how = router.route(StreamMeta(robot="nope", dnis="74950007000"))  # unknown key: the number decides
    assert (robot.name, how) == ("alpha", "number")
    assert router.route(StreamMeta(dnis="7001"))[0].name == "gamma"
    assert router.route(StreamMeta(dnis="7005"))[0].name == "beta"  # from VP_FS_ROUTES
    assert router.route(StreamMeta(dnis="9999"))[1] == "default"
    assert router.route(StreamMeta(present=False))[0].name == "gamma"


def test_unroutable_and_broken_robots_are_clear_errors(registry) -> None:
    router = RobotRouter(registry, {}, default_robot="")
    with pytest.raises(RoutingError) as err:
        router.route(StreamMeta(dnis="12345"))
    assert err.value.reason == "no_route" and "12345" in str(err.value)
    broken = RobotRouter(registry, {"555": "broken"})
    with pytest.raises(RoutingError) as err:
        broken.route(StreamMeta(dnis="555"))
    assert err.value.reason == "bad_robot" and "not valid JSON" in str(err.value)


def test_routes_env_format() -> None:
    assert parse_routes("7000=pipeline_russian,7001=topic_prompts_russian") == {
        "7000": "pipeline_russian",
        "7001": "topic_prompts_russian",
    }
    assert parse_routes("") == {}
    with pytest.raises(ValueError):
        parse_routes("7000")


def test_stock_or_missing_esl_password_is_refused() -> None:
    assert "not set" in (password_problem(GatewayFsSettings(fs_esl_password=SecretStr(""))) or "")
    stock = GatewayFsSettings(fs_esl_password=SecretStr("ClueCon"))
    assert "stock" in (password_problem(stock) or "")
    dev = GatewayFsSettings(fs_esl_password=SecretStr("ClueCon"), fs_esl_allow_default_password=True)
    assert password_problem(dev) is None
    assert password_problem(GatewayFsSettings(fs_esl_password=SecretStr("x7-long-secret"))) is None


def test_service_refuses_to_start_with_the_stock_password(monkeypatch) -> None:
    from vp_gateway_fs.app import build

    monkeypatch.setenv("VP_FS_ESL_PASSWORD", "ClueCon")
    with pytest.raises(SystemExit) as exit_:
        build()
    assert "stock password" in str(exit_.value) and "ClueCon" not in str(exit_.value)
    monkeypatch.delenv("VP_FS_ESL_PASSWORD")
    with pytest.raises(SystemExit):
        build()
