"""The peer's originate: the far end answers after its ring time, is busy, or never answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.waiting import wait_for
from voiceplatform_devstack import FreeSwitchPeer
from voiceplatform_devstack.freeswitch_outbound import Callee, human, parse_originate

DIAL = (
    "{origination_uuid=%s,originate_timeout=%s,vp_robot=bot,vp_var_name=%%D0%%90%%D0%%BD%%D0%%BD%%D0%%B0}"
    "sofia/gateway/carrier/%s &park()"
)


async def test_originate_parses_variables_endpoint_and_application() -> None:
    variables, endpoint, app = parse_originate(r"{a=1,b=x\,y,c='two words'}sofia/gateway/gw/7999 &park()")
    assert variables == {"a": "1", "b": "x,y", "c": "two words"}
    assert (endpoint, app) == ("sofia/gateway/gw/7999", "&park()")


async def test_answer_after_the_ring_time_with_the_variables_on_every_event(tmp_path: Path) -> None:
    async with FreeSwitchPeer(esl_password="x", temp_dir=tmp_path) as peer:
        peer.outbound.callees["79990001122"] = Callee("answer", ring_s=0.3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        out = await peer.api("originate", DIAL % ("u-answer-0001", 5, "79990001122"))
        assert out == "+OK u-answer-0001\n"
        assert loop.time() - started >= 0.3  # it rang first
        names = [e.name for e in peer.fired if e.get("Unique-ID") == "u-answer-0001"]
        assert names[:3] == ["CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_PARK"]
        answer = peer.events_named("CHANNEL_ANSWER", "u-answer-0001")[0]
        assert answer.get("variable_vp_robot") == "bot"
        assert answer.get("variable_vp_var_name") == "%D0%90%D0%BD%D0%BD%D0%B0"
        call = peer.locate("u-answer-0001")
        assert call is not None and call.stream is None  # &park(): the stream is the gateway's to start


async def test_busy_and_no_answer_end_with_their_causes(tmp_path: Path) -> None:
    async with FreeSwitchPeer(esl_password="x", temp_dir=tmp_path) as peer:
        peer.outbound.callees["79990000001"] = Callee("busy", ring_s=0.1)
        peer.outbound.callees["79990000002"] = Callee("no_answer")
        assert await peer.api("originate", DIAL % ("u-busy-00001", 5, "79990000001")) == "-ERR USER_BUSY\n"
        out = await peer.api("originate", DIAL % ("u-noans-0001", 0.3, "79990000002"))
        assert out == "-ERR NO_ANSWER\n"
        await wait_for(lambda: len(peer.events_named("CHANNEL_HANGUP_COMPLETE")) == 2)
        ended = peer.events_named("CHANNEL_HANGUP_COMPLETE")
        causes = {e.get("Unique-ID"): e.get("Hangup-Cause") for e in ended}
        assert causes == {"u-busy-00001": "USER_BUSY", "u-noans-0001": "NO_ANSWER"}
        assert not peer.events_named("CHANNEL_ANSWER")


async def test_the_scripted_callee_speaks_after_the_answer(tmp_path: Path) -> None:
    async with FreeSwitchPeer(esl_password="x", temp_dir=tmp_path) as peer:
        peer.outbound.callees["79990001122"] = human(hello_s=0.3, after_s=0.1)
        loop = asyncio.get_running_loop()
        started = loop.time()  # before the answer: the callee's pause and hello are timed from it
        await peer.api("originate", DIAL % ("u-human-0001", 5, "79990001122"))
        call = peer.locate("u-human-0001")
        assert call is not None
        await wait_for(lambda: call._consumed >= int(0.3 * 8000) * 2, 3.0)  # the hello went out
        assert loop.time() - started >= 0.1 + 0.3  # after its pause, in real time
