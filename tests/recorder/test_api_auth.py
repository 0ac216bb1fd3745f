"""The recorder API's bearer tokens: no token → 401, the read-only token sees no personal data
(caller numbers, transcripts, turn texts), the operator token sees everything; /health and /metrics
stay open for probes and carry no personal data. Real NATS JetStream, PostgreSQL and Redis."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.recorder.conftest import OPERATOR_TOKEN, READONLY_TOKEN, new_call_id, settle
from tests.recorder.test_api import app_of, client_of
from tests.recorder.test_recorder import call_sequence, play
from voiceplatform.bus.nats import NatsBus
from voiceplatform.config.api_tokens import ApiTokensError, ensure_tokens_file, read_tokens_file
from voiceplatform.runtime.service import build_http_app
from vp_recorder.api import RecorderApi, build_api
from vp_recorder.app import RecorderService
from vp_recorder.settings import RecorderSettings

CALLER = "+7999"  # the caller number call_sequence records
SAID = "здравствуйте"  # a caller's words in call_sequence


async def recorded_call(recorder: RecorderService, gateway_bus: NatsBus, js_nats_url: str) -> str:
    call_id = new_call_id()
    events = call_sequence(call_id)
    await play(gateway_bus, events)
    await settle(recorder, js_nats_url, len(events))
    return call_id


async def test_no_or_wrong_token_is_401(
    recorder: RecorderService, gateway_bus: NatsBus, js_nats_url: str
) -> None:
    call_id = await recorded_call(recorder, gateway_bus, js_nats_url)
    for token in (None, "wrong-token", ""):
        async with client_of(app_of(recorder), token=token) as client:
            for path in ("/calls", f"/calls/{call_id}", f"/calls/{call_id}/turns", "/scenarios/a/b"):
                response = await client.get(path)
                assert response.status_code == 401, (token, path)
                assert response.headers["www-authenticate"].startswith("Bearer")
                assert "token" in response.json()["error"]
                assert CALLER not in response.text
    async with client_of(app_of(recorder), token=None) as client:
        basic = await client.get("/calls", headers={"Authorization": f"Basic {OPERATOR_TOKEN}"})
    assert basic.status_code == 401


async def test_readonly_token_gets_no_personal_data_operator_gets_it(
    recorder: RecorderService, gateway_bus: NatsBus, js_nats_url: str
) -> None:
    call_id = await recorded_call(recorder, gateway_bus, js_nats_url)
    async with client_of(app_of(recorder), token=READONLY_TOKEN) as client:
        calls = await client.get("/calls")
        assert calls.status_code == 200
        row = next(c for c in calls.json()["calls"] if c["call_id"] == call_id)
        assert row["caller"] is None and row["turns"] == 2 and row["status"] == "ended"
        assert CALLER not in calls.text

        by_caller = await client.get("/calls", params={"caller": CALLER})
        assert by_caller.status_code == 403 and "operator" in by_caller.json()["error"]

        transcript = await client.get(f"/calls/{call_id}")
        assert transcript.status_code == 403 and "operator" in transcript.json()["error"]
        assert SAID not in transcript.text

        turns = await client.get(f"/calls/{call_id}/turns")
        assert turns.status_code == 200
        rows = turns.json()["turns"]
        assert rows and all("user_text" not in t and "bot_text" not in t for t in rows)
        assert all("voice_to_voice_ms" in t for t in rows)
        assert SAID not in turns.text

    async with client_of(app_of(recorder), token=OPERATOR_TOKEN) as client:
        calls = await client.get("/calls", params={"caller": CALLER})
        row = next(c for c in calls.json()["calls"] if c["call_id"] == call_id)
        assert row["caller"] == CALLER
        transcript = await client.get(f"/calls/{call_id}")
        assert transcript.status_code == 200 and SAID in transcript.text
        turns = await client.get(f"/calls/{call_id}/turns")
        assert any(t["user_text"] == SAID for t in turns.json()["turns"])


async def test_health_and_metrics_need_no_token_and_carry_no_personal_data(
    recorder: RecorderService, gateway_bus: NatsBus, js_nats_url: str
) -> None:
    await recorded_call(recorder, gateway_bus, js_nats_url)
    app = build_http_app(recorder, [gateway_bus], {"phase": "running"})
    async with client_of(app, token=None) as client:
        health = await client.get("/health")
        metrics = await client.get("/metrics")
        calls = await client.get("/calls")
    assert health.status_code == 200 and metrics.status_code == 200
    assert calls.status_code == 401
    for body in (health.text, metrics.text):
        assert CALLER not in body and SAID not in body
        assert OPERATOR_TOKEN not in body and READONLY_TOKEN not in body


async def test_without_any_token_configured_the_api_is_locked(settings: RecorderSettings) -> None:
    bare = settings.model_copy(update={"api_operator_token": None, "api_readonly_token": None})
    api = RecorderApi(bare)
    try:
        async with client_of(build_api(api)) as client:
            response = await client.get("/calls")
        assert response.status_code == 401
        assert "no tokens configured" in response.json()["error"]
    finally:
        await api.aclose()


async def test_tokens_file_is_0600_kept_across_starts_and_read_by_the_recorder(
    settings: RecorderSettings, tmp_path: Path
) -> None:
    path = ensure_tokens_file(tmp_path / "data" / "recorder_api_tokens")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    tokens = read_tokens_file(path)
    assert set(tokens) == {"operator", "readonly"} and tokens["operator"] != tokens["readonly"]
    assert read_tokens_file(ensure_tokens_file(path)) == tokens  # not rewritten on the next start

    from_file = settings.model_copy(
        update={"api_operator_token": None, "api_readonly_token": None, "api_tokens_file": path}
    )
    api = RecorderApi(from_file)
    try:
        async with client_of(build_api(api), token=tokens["readonly"]) as client:
            assert (await client.get("/calls/some-call")).status_code == 403
        async with client_of(build_api(api), token=OPERATOR_TOKEN) as client:
            assert (await client.get("/calls/some-call")).status_code == 401
    finally:
        await api.aclose()


def test_unreadable_or_malformed_tokens_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ApiTokensError, match="cannot read"):
        read_tokens_file(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.write_text("admin=xyz\n")
    with pytest.raises(ApiTokensError, match="bad:1"):
        read_tokens_file(bad)
