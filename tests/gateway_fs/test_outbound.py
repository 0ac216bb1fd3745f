"""Outbound calls through gateway-fs and the FreeSWITCH peer: the HTTP API, originate, AMD.

The peer plays the callee (a human's "алло" then silence, a voicemail greeting with a beep); the
test plays the workers (TTS of greetings: conftest; one caller turn: ``bot_turn``).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from tests.gateway_fs.conftest import Stack, robot_quiet
from tests.gateway_fs.test_gateway_fs import bot_turn, goodbye_pcm
from tests.waiting import wait_for
from voiceplatform import subjects
from voiceplatform.cli.main import main
from voiceplatform.outbound.amd import AmdConfig
from voiceplatform.outbound.campaign import Campaign, DialTarget
from voiceplatform.wire import (
    AsrPartial,
    CallAmd,
    CallDialed,
    CallEnded,
    CallStarted,
    ControlInterrupt,
    PlaybackStarted,
)
from voiceplatform_devstack.freeswitch_outbound import (
    Callee,
    Utterance,
    human,
    parse_originate,
    speech_like,
    voicemail,
)
from vp_gateway_fs.dialer import CampaignRun, Dialer, call_variables
from vp_gateway_fs.settings import GatewayFsSettings

KEY = "dial-key-of-the-tests-0123456789"
NUMBER = "79990001122"


def outbound(stack: Stack, **amd: Any) -> None:
    """A robot whose greeting names the callee; dialling enabled with a key."""
    folder = stack.service.settings.robots_dir / "dialer"
    folder.mkdir(exist_ok=True)
    config = {"llm": {"provider": "openai"}, "greeting_text": "Здравствуйте, {name}!"}
    (folder / "config.json").write_text(json.dumps(config))
    stack.service.settings.fs_dial_api_key = SecretStr(KEY)
    stack.service.settings.fs_stream_url = stack.ws_base


async def post(stack: Stack, body: dict[str, Any], key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient() as client:
        return await client.post(f"{stack.http}/outbound/campaigns", json=body, headers=headers)


def campaign(**extra: Any) -> dict[str, Any]:
    return {"robot": "dialer", "targets": [{"number": NUMBER, "variables": {"name": "Анна"}}], **extra}


async def test_the_endpoint_refuses_without_credentials(stack: Stack) -> None:
    r = await post(stack, campaign(), key=None)  # no key configured at all: disabled
    assert r.status_code == 403
    outbound(stack)
    assert (await post(stack, campaign(), key=None)).status_code == 401
    assert (await post(stack, campaign(), key="wrong-key")).status_code == 401
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{stack.http}/outbound/campaigns/x")).status_code == 401
    assert not stack.peer.outbound.originated  # nothing was dialled
    bad = await post(stack, {"robot": "dialer", "targets": [{"number": "12ab"}]})
    assert bad.status_code == 422


async def test_a_human_hears_the_greeting_right_after_hello_and_the_dialogue_goes_on(stack: Stack) -> None:
    outbound(stack)
    stack.peer.outbound.callees[NUMBER] = human(hello_s=0.5, after_s=0.8)
    r = await post(stack, campaign())
    assert r.status_code == 201, r.text
    await wait_for(lambda: stack.peer.outbound.originated, 5)
    call = stack.peer.outbound.originated[0]
    call_id = f"phone-{call.uuid}"
    # the workers hear the hello as an utterance and the brain answers it before detection is done:
    # that answer must not play (the greeting is the answer to the hello)
    await wait_for(lambda: stack.of(CallStarted, call_id), 5)
    hello_reply = goodbye_pcm(0.3)
    await bot_turn(stack, call_id, "hello", hello_reply)
    await wait_for(lambda: stack.of(CallAmd, call_id), 8)
    amd = stack.of(CallAmd, call_id)[0]
    assert (amd.result, amd.reason, amd.action) == ("human", "short_hello", "greeting")
    await robot_quiet(stack, call, 8)
    # nothing played before the callee answered and said hello; the greeting named them
    assert stack.synthesized == ["Здравствуйте, Анна!"]
    hello_end = call._t0 + 0.8 + 0.5
    assert call.plays and call.plays[0].started_at is not None and call.plays[0].started_at >= hello_end
    started = stack.of(CallStarted, call_id)[0]
    assert started.variables == {"name": "Анна"}
    assert "hello" not in {p.turn_id for p in stack.of(PlaybackStarted, call_id)}
    assert [(c.turn_id, c.reason) for c in stack.of(ControlInterrupt, call_id)] == [("hello", "backchannel")]
    assert [d.outcome for d in stack.of(CallDialed, call_id)] == ["answered"]
    # the dialogue goes on: a caller turn gets its reply played
    before = len(call.plays)
    await bot_turn(stack, call_id, "u1", goodbye_pcm())
    await wait_for(lambda: len(call.plays) > before and call.plays[-1].stopped_at, 5)
    await call.hangup()
    await wait_for(lambda: stack.of(CallEnded, call_id))
    status = await _status(stack, r.json()["id"])
    assert status["finished"] and status["results"][0]["attempts"][0]["amd"] == "human"


async def test_voicemail_gets_the_message_after_the_beep_then_hangup(stack: Stack) -> None:
    outbound(stack)
    stack.peer.outbound.callees[NUMBER] = voicemail(greeting_s=3.0)
    amd = {"on_voicemail": "message", "voicemail_text": "{name}, перезвоните нам, пожалуйста."}
    r = await post(stack, campaign(amd=amd))
    assert r.status_code == 201, r.text
    await wait_for(lambda: stack.peer.outbound.originated, 5)
    call = stack.peer.outbound.originated[0]
    call_id = f"phone-{call.uuid}"
    # the workers hear the machine's greeting as an utterance and answer it, while the gateway
    # waits for the beep: that reply must never be played
    await wait_for(lambda: stack.of(CallAmd, call_id), 8)
    machine_reply = goodbye_pcm(0.5)
    await bot_turn(stack, call_id, "m1", machine_reply)
    await wait_for(lambda: call.ended.is_set(), 15)
    found = stack.of(CallAmd, call_id)[0]
    assert (found.result, found.action) == ("voicemail", "voicemail_message")
    assert stack.of(ControlInterrupt, call_id)[0].reason == "backchannel"
    # the machine's words got no reply: only the voicemail message (the greeting turn) was played
    assert {p.turn_id for p in stack.of(PlaybackStarted, call_id)} == {f"{call_id}-greeting"}
    assert stack.synthesized == ["Анна, перезвоните нам, пожалуйста."]
    beep_end = call._t0 + 0.1 + 3.0 + 0.4
    assert call.plays and all(p.started_at and p.started_at >= beep_end for p in call.plays)
    await wait_for(lambda: stack.of(CallEnded, call_id))
    assert stack.of(CallEnded, call_id)[0].reason == "robot_hangup"


async def test_voicemail_is_hung_up_on_when_so_configured(stack: Stack) -> None:
    outbound(stack)
    stack.peer.outbound.callees[NUMBER] = voicemail(greeting_s=3.0)
    r = await post(stack, campaign(amd={"on_voicemail": "hangup"}))
    assert r.status_code == 201
    await wait_for(lambda: stack.peer.outbound.originated, 5)
    call = stack.peer.outbound.originated[0]
    call_id = f"phone-{call.uuid}"
    await wait_for(lambda: call.ended.is_set(), 10)
    assert not call.plays and not stack.synthesized  # the machine heard nothing
    await wait_for(lambda: stack.of(CallEnded, call_id))
    assert stack.of(CallEnded, call_id)[0].reason == "amd_voicemail"


async def test_busy_is_retried_and_every_attempt_recorded(stack: Stack) -> None:
    outbound(stack)
    stack.peer.outbound.callees[NUMBER] = Callee("busy", ring_s=0.05)
    r = await post(stack, campaign(retry={"attempts": 2, "interval_s": 0.2}))
    assert r.status_code == 201
    await wait_for(lambda: len(stack.of(CallDialed)) == 2, 8)
    assert [(d.attempt, d.outcome, d.cause) for d in stack.of(CallDialed)] == [
        (1, "busy", "USER_BUSY"),
        (2, "busy", "USER_BUSY"),
    ]
    for dialed in stack.of(CallDialed):  # each unanswered attempt's record is closed
        await wait_for(lambda d=dialed: stack.of(CallEnded, d.call_id), 5)
        assert stack.of(CallEnded, dialed.call_id)[0].reason == "dial_busy"
    await wait_for(lambda: stack.service.dialer.runs[r.json()["id"]].campaign.finished, 5)
    status = await _status(stack, r.json()["id"])
    assert status["results"][0]["status"] == "gave_up"


async def _status(stack: Stack, campaign_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        r = await client.get(
            f"{stack.http}/outbound/campaigns/{campaign_id}", headers={"Authorization": f"Bearer {KEY}"}
        )
    assert r.status_code == 200
    result: dict[str, Any] = r.json()
    return result


async def test_vp_dial_sends_a_csv_list_and_its_columns_become_the_calls_variables(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbound(stack)
    stack.peer.outbound.callees[NUMBER] = human()
    listing = tmp_path / "list.csv"
    listing.write_text(f"number,name,order\n{NUMBER},Пётр,A-17\n", encoding="utf-8")
    argv = ["dial", "--list", str(listing), "--robot", "dialer", "--url", stack.http, "--no-amd"]
    monkeypatch.delenv("VP_FS_DIAL_API_KEY", raising=False)
    assert await asyncio.to_thread(main, argv) == 2  # no key: refused before any request
    monkeypatch.setenv("VP_FS_DIAL_API_KEY", KEY)
    assert await asyncio.to_thread(main, argv) == 0
    await wait_for(lambda: stack.peer.outbound.originated, 5)
    call = stack.peer.outbound.originated[0]
    call_id = f"phone-{call.uuid}"
    await wait_for(lambda: stack.of(CallStarted, call_id), 5)
    assert stack.of(CallStarted, call_id)[0].variables == {"name": "Пётр", "order": "A-17"}
    assert call.variables["vp_var_name"] == "%D0%9F%D1%91%D1%82%D1%80"  # nothing breaks the dial string
    await robot_quiet(stack, call, 8)
    assert stack.synthesized == ["Здравствуйте, Пётр!"]  # --no-amd: greeted at once
    await call.hangup()


async def test_an_ivr_is_known_by_its_words_and_hung_up_on(stack: Stack) -> None:
    outbound(stack)
    # a menu read in phrases: neither a short hello nor one long stretch, so only words decide it
    phrase = speech_like(1.5) + bytes(int(0.35 * 8000) * 2)
    stack.peer.outbound.callees[NUMBER] = Callee("answer", 0.1, [Utterance(0.1, phrase * 3)])
    r = await post(stack, campaign())
    assert r.status_code == 201
    await wait_for(lambda: stack.peer.outbound.originated, 5)
    call = stack.peer.outbound.originated[0]
    call_id = f"phone-{call.uuid}"
    await wait_for(lambda: stack.of(CallStarted, call_id), 5)
    words = "Здравствуйте! Для связи с оператором нажмите ноль"
    await stack.workers.publish(subjects.asr(call_id), AsrPartial(call_id=call_id, turn_id="m1", text=words))
    await wait_for(lambda: call.ended.is_set(), 10)
    found = stack.of(CallAmd, call_id)[0]
    assert (found.result, found.reason, found.action, found.words) == ("ivr", "words", "hangup", words)
    assert not call.plays
    await wait_for(lambda: stack.of(CallEnded, call_id))
    assert stack.of(CallEnded, call_id)[0].reason == "amd_ivr"


def test_no_variable_value_can_break_the_dial_string() -> None:
    settings = GatewayFsSettings(fs_dial_gateway="carrier")
    dialer = Dialer(SimpleNamespace(settings=settings))  # type: ignore[arg-type]
    hostile = "x},vp_robot=other,{y='a b'\\"
    c = Campaign("c1", [DialTarget(NUMBER, {"name": hostile})])
    run = CampaignRun(c, "dialer", AmdConfig())
    attempt = c.started(c.states[0], "0b7c5d8e-uuid", 0.0)
    command = dialer.originate_command(run, c.states[0], attempt)
    variables, endpoint, app = parse_originate(command.removeprefix("originate "))
    assert (endpoint, app) == (f"sofia/gateway/carrier/{NUMBER}", "&park()")
    assert variables["vp_robot"] == "dialer" and variables["origination_uuid"] == "0b7c5d8e-uuid"
    assert call_variables(variables) == {"name": hostile}  # decoded back exactly by the gateway
