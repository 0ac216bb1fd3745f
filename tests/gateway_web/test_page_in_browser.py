"""The bundled page in headless Chromium with a fake microphone saying Russian utterances: the
greeting, the caller's words and the robot's replies appear, the reply's audio plays through the
playback worklet, a barge-in cuts the shown reply to what was heard, and a dropped socket comes back
to the same call.

``VP_WEB_SCREENSHOT=docs/img/web-client.png`` also saves the page during the call there (the
picture in the docs).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.audio_fixtures import caller_audio, festival_available
from tests.gateway_web.browser import CHROMIUM, Browser, DroppingProxy
from tests.gateway_web.conftest import GREETING
from tests.gateway_web.helpers import Gateway
from tests.gateway_web.scripted_robot import SAID, SCRIPT, ScriptedRobot
from tests.waiting import wait_for
from voiceplatform.audio import write_wav
from voiceplatform.bus.nats import NatsBus
from voiceplatform.wire import CallEnded, CallStarted

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)

LISTEN = "vpCall.addEventListener('message', (e) => (window.events ||= []).push(e.detail));"
PLAYED = "vpCall.addEventListener('speaking', (e) => { window.played = e.detail.played; });"


def events_of(kind: str) -> str:
    return f"(window.events || []).filter((e) => e.type === {kind!r})"


@pytest.fixture
def mic_wav(tmp_path: Path) -> Path:
    """The caller's two utterances with 3 s of silence around each (the fake microphone loops)."""
    if not festival_available():
        pytest.skip("festival is not installed (apt-get install festival festvox-ru)")
    write_wav(tmp_path / "caller.wav", caller_audio(SAID, gap_s=3.0), 16000)
    return tmp_path / "caller.wav"


async def test_a_call_shows_the_dialogue_plays_the_reply_and_cuts_it_on_barge_in(
    gateway_factory, private_nats, mic_wav, tmp_path
):
    async with gateway_factory(reconnect_grace_s=30) as gw:
        robot = ScriptedRobot(await NatsBus.connect(private_nats, "scripted-robot"), SCRIPT)
        await robot.start()
        browser = Browser(tmp_path / "profile", mic_wav=mic_wav)
        try:
            await browser.start()
            await browser.open(f"http://{gw.base}/")
            await browser.js(f"document.getElementById('start').click(); {LISTEN} {PLAYED}")
            await browser.until("document.getElementById('state').dataset.state === 'live'")
            robot_says = "[...document.querySelectorAll('.msg.robot .text')].map((e) => e.textContent)"
            assert GREETING in await browser.until(
                f"{robot_says}.join('|').includes({GREETING!r}) && {robot_says}"
            )
            caller_says = "[...document.querySelectorAll('.msg.caller')].map((e) => e.textContent)"
            assert SAID[0] in await browser.until(f"{caller_says}.length && {caller_says}", 60)
            assert await browser.text("topic") == "Тема: pets"
            assert await browser.until("parseInt(document.getElementById('level').style.width) > 0")

            # the caller's second utterance comes while the long reply plays: a barge-in
            cut = await browser.until(f"{events_of('reply.cut')}[0]", 60)
            full = " ".join(SCRIPT[0].sentences)
            bubble = json.dumps(f'.msg.robot.cut[data-turn="{cut["turn_id"]}"] .text')
            shown = await browser.js(f"document.querySelector({bubble}).textContent")
            assert shown == (cut["heard_text"] or "…") and shown != full
            assert SCRIPT[0].sentences[-1] not in shown  # the unheard rest is not shown as said
            assert full.startswith(cut["heard_text"].rstrip("…").removesuffix(" "))
            assert await browser.js(f"{events_of('playback.flush')}.length") >= 1
            # the page told the gateway what it played: the cut is where the caller was
            call_id = cut["turn_id"].rsplit("-", 1)[0]
            assert gw.service.calls[call_id].sink.reports > 0

            # the next reply is played out and gets its latency figure
            assert SAID[1] in await browser.until(f"{caller_says}.length > 1 && {caller_says}", 60)
            second = "[...document.querySelectorAll('.msg.robot:not(.cut)')].at(-1)"
            latency = await browser.until(f"{second}?.dataset.latency", 60)
            assert int(latency) >= 0
            assert await browser.js(f"{second}.querySelector('.text').textContent") == " ".join(
                SCRIPT[1].sentences
            )
            assert await browser.js("window.played") > 16000  # > 1 s of robot audio reached the speakers
            shot = tmp_path / "web-client.png"
            await browser.screenshot(shot)
            assert shot.read_bytes().startswith(b"\x89PNG")
            if target := os.environ.get("VP_WEB_SCREENSHOT"):
                shutil.copy(shot, target)

            call_id = next(iter(gw.service.calls))
            await browser.js("document.getElementById('stop').click()")
            assert (
                await browser.until("document.getElementById('ended').textContent") == "Вы положили трубку."
            )
            await wait_for(lambda: gw.lifecycle(call_id, CallEnded), timeout=10)
            assert gw.lifecycle(call_id, CallEnded)[0].reason == "caller_hangup"
            assert browser.errors == []
        finally:
            await browser.stop()
            await robot.stop()
            await robot.bus.close()


async def call_from_the_page(browser: Browser, url: str, gw: Gateway) -> str:
    """Open the page at ``url``, press start; the call's id once the fake microphone's frames came."""
    await browser.start()
    await browser.open(url)
    await browser.js("document.getElementById('start').click()")
    await wait_for(lambda: gw.service.calls, timeout=30)
    call_id = next(iter(gw.service.calls))
    await wait_for(lambda: len(gw.chunks(call_id)) >= 10, timeout=30)  # the fake microphone
    return call_id


async def test_the_page_resumes_the_same_call_after_a_network_drop(gateway_factory, tmp_path):
    async with gateway_factory(reconnect_grace_s=30) as gw:
        proxy = DroppingProxy(int(gw.base.rsplit(":", 1)[1]))
        await proxy.start()
        browser = Browser(tmp_path / "profile")
        try:
            call_id = await call_from_the_page(browser, f"http://127.0.0.1:{proxy.port}/", gw)
            proxy.drop_all()  # the network drops: the page reconnects with its resume token
            await wait_for(lambda: gw.service.calls[call_id].sink.ws is None, timeout=10)
            heard = len(gw.chunks(call_id))
            await wait_for(lambda: len(gw.chunks(call_id)) > heard + 10, timeout=30)  # audio resumes
            assert "Связь восстановлена" in await browser.text("transcript")
            assert await browser.js("document.getElementById('alert').hidden")  # the warning is gone
            assert list(gw.service.calls) == [call_id]
            await browser.js("document.getElementById('stop').click()")
            await wait_for(lambda: gw.lifecycle(call_id, CallEnded), timeout=10)
            assert gw.lifecycle(call_id, CallEnded)[0].reason == "caller_hangup"
            assert len([m for m in gw.seen if isinstance(m, CallStarted)]) == 1
            assert browser.errors == []
        finally:
            await browser.stop()
            await proxy.stop()


async def test_a_page_that_cannot_get_back_says_the_connection_was_lost(gateway_factory, tmp_path):
    async with gateway_factory(reconnect_grace_s=1) as gw:
        proxy = DroppingProxy(int(gw.base.rsplit(":", 1)[1]))
        await proxy.start()
        browser = Browser(tmp_path / "profile")
        try:
            await browser.start()
            await browser.open(f"http://127.0.0.1:{proxy.port}/")
            await browser.js("document.getElementById('start').click()")
            await browser.until("document.getElementById('state').dataset.state === 'live'")
            call_id = next(iter(gw.service.calls))
            await proxy.stop()  # the gateway is out of reach for longer than the call's grace period
            await wait_for(lambda: gw.lifecycle(call_id, CallEnded), timeout=10)
            assert gw.lifecycle(call_id, CallEnded)[0].reason == "client_lost"
            assert await browser.until("document.getElementById('ended').textContent") == "Звонок завершён."
            assert await browser.text("alert") == "Связь с сервером потеряна, звонок завершён."
            assert await browser.js("document.getElementById('start').disabled") is False
            assert browser.errors == []
        finally:
            await browser.stop()


async def test_the_microphone_can_be_chosen_remembered_and_muted(gateway_factory, tmp_path):
    async with gateway_factory() as gw:
        browser = Browser(tmp_path / "profile")
        try:
            await browser.start()
            await browser.open(f"http://{gw.base}/")
            await browser.js("document.getElementById('start').click()")
            await browser.until("document.getElementById('state').dataset.state === 'live'")
            # once allowed, the inputs have names (Chromium's fake devices here)
            names = await browser.until(
                "document.getElementById('mic').options.length > 1 && "
                "[...document.getElementById('mic').options].map((o) => o.text)"
            )
            assert any("Fake" in name for name in names)
            call_id = next(iter(gw.service.calls))
            await wait_for(lambda: any(c.pcm.strip(b"\0") for c in gw.chunks(call_id)), timeout=30)
            await browser.js("document.getElementById('mute').click()")
            assert await browser.js("document.getElementById('mute').getAttribute('aria-pressed')") == "true"
            await browser.js("new Promise((r) => setTimeout(r, 200))")  # frames already on their way
            muted_from = len(gw.chunks(call_id))
            await wait_for(lambda: len(gw.chunks(call_id)) > muted_from + 25, timeout=30)
            assert not any(c.pcm.strip(b"\0") for c in gw.chunks(call_id)[muted_from:])  # silence only
            await browser.js("document.getElementById('stop').click()")
            await browser.until("document.getElementById('ended').textContent")

            await browser.open(f"http://{gw.base}/")  # the choice of input is remembered
            # the page lists the inputs after it loads (enumerateDevices is asynchronous)
            await browser.until("document.getElementById('mic').options.length > 1")
            last = "[...document.getElementById('mic').options].at(-1).value"
            await browser.js(f"const m = document.getElementById('mic'); m.value = {last}; m.onchange()")
            chosen = await browser.js("document.getElementById('mic').value")
            await browser.open(f"http://{gw.base}/")
            assert await browser.until("document.getElementById('mic').value") == chosen
            assert browser.errors == []
        finally:
            await browser.stop()


async def test_without_resume_the_page_still_goes_live_and_sends_the_microphone(gateway_factory, tmp_path):
    """``VP_RECONNECT_GRACE_S=0`` (no resume): no call.resumable comes, call.started is enough."""
    async with gateway_factory(reconnect_grace_s=0) as gw:
        browser = Browser(tmp_path / "profile")
        try:
            await call_from_the_page(browser, f"http://{gw.base}/", gw)
            assert await browser.until("document.getElementById('state').dataset.state === 'live'")
            assert browser.errors == []
        finally:
            await browser.stop()
