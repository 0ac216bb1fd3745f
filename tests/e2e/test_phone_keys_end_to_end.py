"""Keypad digits on the whole platform: the FreeSWITCH peer presses keys, gateway-fs (logged in to
NATS as itself) makes them a caller turn, the router and the script answer the key's branch, and
the recorder keeps the digits as the caller's words."""

from __future__ import annotations

import asyncio
import json
import time
import uuid as uuid_module

import pytest

from tests.audio_fixtures import festival_available
from tests.e2e.test_call_end_to_end import stored
from voiceplatform.phone_stream import stream_url
from voiceplatform_devstack import FreeSwitchPeer, PeerCall
from vp_llm.script_loading import BUILTIN_DEFAULTS

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(not festival_available(), reason="festival with the Russian voice is not installed"),
]


async def talk_until(call: PeerCall, done, limit_s: float) -> None:  # type: ignore[no-untyped-def]
    """Stream the caller's silence (a live RTP stream never stops) until ``done()`` or the limit."""
    deadline = time.monotonic() + limit_s
    while not done() and time.monotonic() < deadline and not call.ended.is_set():
        await call.stream_silence(0.1)


def metrics_of(call: PeerCall) -> list[dict]:  # type: ignore[type-arg]
    return [e for e in call.events_text if e.get("type") == "turn.metrics"]


async def test_a_key_chooses_the_scripts_branch_and_is_recorded(platform, postgres_dsn, redis_url):
    peer = FreeSwitchPeer(esl_password=platform.esl_password, esl_port=platform.esl_port)
    await peer.start()
    try:
        deadline = time.monotonic() + 60
        while not any(c.line.startswith("event ") for c in peer.commands):
            assert time.monotonic() < deadline, platform.logs_text()
            await asyncio.sleep(0.05)
        uuid = str(uuid_module.uuid4())
        metadata = json.dumps({"robot": "pipeline_russian", "dnis": "7000", "caller": "vp-e2e", "rate": 8000})
        call = await peer.place_call(
            stream_url(platform.phone_url, uuid, platform.stream_secret),
            destination="7000",
            caller="vp-e2e",
            metadata=metadata,
            uuid=uuid,
        )
        await talk_until(call, lambda: bool(call.plays) and all(p.stopped_at for p in call.plays), 30)
        await call.send_dtmf("0#")  # pipeline_russian: 0 asks for the operator (none configured)
        await talk_until(call, lambda: any(m.get("user_text") == "0" for m in metrics_of(call)), 60)
        (turn,) = [m for m in metrics_of(call) if m.get("user_text") == "0"]
        assert turn["bot_text"] == BUILTIN_DEFAULTS["operator"]["unavailable"], platform.logs_text()
        call_id = f"phone-{uuid}"
        await call.hangup()
    finally:
        await peer.stop()
    row, turns, _session, _history, _ttl = await stored(postgres_dsn, redis_url, call_id)
    assert row is not None and row["status"] == "ended", platform.logs_text()
    assert any(t["user_text"] == "0" for t in turns)
