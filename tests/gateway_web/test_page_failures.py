"""Every way a call from the bundled page can fail says so on the page, in words, where a caller looks
(the alert and the end line), and the page stays usable: no uncaught error, the call button back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.gateway_web.browser import CHROMIUM, Browser, DroppingProxy
from tests.waiting import wait_for
from voiceplatform.bus.nats import NatsBus
from voiceplatform.wire import CallEnded
from vp_realtime.app import RealtimeService
from vp_realtime.settings import RealtimeSettings

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)

ALERT = "document.getElementById('alert').hidden ? '' : document.getElementById('alert').textContent"
ENDED = "document.getElementById('ended').textContent"


async def call_and_wait(browser: Browser, url: str, before_click: str = "") -> tuple[str, str]:
    """Open the page, press "call", wait for the call to be over; the alert and the end line."""
    await browser.open(url)
    await browser.js(f"{before_click}; document.getElementById('start').click()")
    await browser.until(ENDED)
    assert await browser.js("document.getElementById('start').disabled") is False  # can call again
    assert browser.errors == []
    return str(await browser.js(ALERT)), str(await browser.js(ENDED))


@pytest.fixture
async def browser_for(tmp_path: Path):
    started: list[Browser] = []

    async def make(**options: object) -> Browser:
        browser = Browser(tmp_path / f"profile{len(started)}", **options)  # type: ignore[arg-type]
        started.append(browser)
        await browser.start()
        return browser

    yield make
    for browser in started:
        await browser.stop()


async def test_a_denied_microphone(gateway_factory, browser_for):
    async with gateway_factory() as gw:
        browser = await browser_for(allow_mic=False)
        alert, ended = await call_and_wait(browser, f"http://{gw.base}/")
        assert alert.startswith("Нет доступа к микрофону. Разрешите его в настройках сайта")
        assert ended == "Звонок не состоялся."
        assert not gw.service.calls and not gw.seen


async def test_a_machine_without_a_microphone(gateway_factory, browser_for):
    async with gateway_factory() as gw:
        browser = await browser_for(fake_mic=False)
        alert, ended = await call_and_wait(browser, f"http://{gw.base}/")
        assert alert.startswith("Микрофон не найден.")
        assert ended == "Звонок не состоялся."


async def test_an_insecure_origin_is_explained_before_the_click(gateway_factory, browser_for):
    async with gateway_factory(allowed_origins="") as gw:
        port = gw.base.rsplit(":", 1)[1]
        browser = await browser_for(hosts=("voice.test",))  # http, not localhost: no getUserMedia
        await browser.open(f"http://voice.test:{port}/")
        assert "незащищённому адресу" in await browser.js(ALERT)
        alert, ended = await call_and_wait(browser, f"http://voice.test:{port}/")
        assert "незащищённому адресу" in alert and ended == "Звонок не состоялся."
        assert not gw.service.calls


async def test_busy(gateway_factory, browser_for):
    async with gateway_factory(max_calls=1) as gw:
        holder, _ = await gw.call()
        browser = await browser_for()
        alert, ended = await call_and_wait(browser, f"http://{gw.base}/")
        assert alert.startswith("Все линии заняты, позвоните чуть позже.")
        assert ended == "Звонок не состоялся."
        await holder.close()


async def test_a_refused_call_token(gateway_factory, browser_for):
    async with gateway_factory() as gw:
        browser = await browser_for()
        forged = "window.fetch = async () => new Response(JSON.stringify({token: 'forged'}))"
        alert, ended = await call_and_wait(browser, f"http://{gw.base}/", forged)
        assert alert.startswith("Сервер не дал доступ к звонку (токен не принят).")
        assert ended == "Звонок не состоялся."


async def test_page_tokens_switched_off(gateway_factory, browser_for):
    async with gateway_factory(page_tokens=False) as gw:
        browser = await browser_for()
        alert, _ = await call_and_wait(browser, f"http://{gw.base}/")
        assert alert.startswith("Сервер не дал доступ к звонку") and "page tokens" in alert


async def test_the_call_ends_at_its_length_limit_and_says_why(gateway_factory, browser_for):
    async with gateway_factory(max_call_s=2) as gw:
        browser = await browser_for()
        alert, ended = await call_and_wait(browser, f"http://{gw.base}/")
        assert ended == "Звонок завершён: он достиг предельной длительности."
        assert alert == ""


async def test_a_realtime_robot_without_a_key_says_so_and_the_call_ends(
    gateway_factory, private_nats, robots, browser_for, monkeypatch
):
    for name in ("OPENAI_API_KEY", "YANDEX_API_KEY", "YANDEX_IAM_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    (robots / "rt").mkdir()
    config = {"mode": "realtime", "greeting_text": "Здравствуйте!", "realtime": {"provider": "openai"}}
    (robots / "rt" / "config.json").write_text(json.dumps(config))
    (robots / "rt" / "prompt.txt").write_text("Ты вежливый помощник.")
    realtime = RealtimeService(RealtimeSettings(robots_dir=robots, nats_url=private_nats, instance_id="rt-1"))
    bus = await NatsBus.connect(private_nats, "realtime")
    await realtime.start(bus)
    try:
        async with gateway_factory() as gw:
            browser = await browser_for()
            pick = "document.getElementById('robot').value = 'rt'"
            alert, ended = await call_and_wait(browser, f"http://{gw.base}/", pick)
            assert alert.startswith("Робот не смог ответить (realtime: error) — не задан ключ API робота.")
            assert "no OPENAI_API_KEY" in alert
            assert ended == "Звонок завершён: робот недоступен."
            await wait_for(lambda: [m for m in gw.seen if isinstance(m, CallEnded)], timeout=10)
            ended_msg = next(m for m in gw.seen if isinstance(m, CallEnded))
            assert ended_msg.reason == "hangup:realtime_unavailable"
    finally:
        await realtime.drain(2.0)
        await bus.close()


async def test_a_gateway_that_is_not_taking_calls(gateway_factory, browser_for):
    async with gateway_factory() as gw:
        gw.service.accepting = False  # draining
        browser = await browser_for()
        alert, ended = await call_and_wait(browser, f"http://{gw.base}/")
        assert alert.startswith("Сервер сейчас не принимает звонки")
        assert ended == "Звонок не состоялся."


async def test_a_gateway_out_of_reach_after_the_page_loaded(gateway_factory, browser_for):
    async with gateway_factory() as gw:
        proxy = DroppingProxy(int(gw.base.rsplit(":", 1)[1]))
        await proxy.start()
        browser = await browser_for()
        await browser.open(f"http://127.0.0.1:{proxy.port}/")
        await proxy.stop()
        await browser.js("document.getElementById('start').click()")
        await browser.until(ENDED)
        assert (await browser.js(ALERT)).startswith("Не удалось соединиться с сервером звонков.")
        assert await browser.js(ENDED) == "Звонок не состоялся."
        assert browser.errors == []


async def test_the_call_ends_when_no_audio_comes_and_says_why(gateway_factory, browser_for):
    async with gateway_factory(idle_timeout_s=1) as gw:
        browser = await browser_for()
        stalled = (
            "window.addEventListener('click', () => setTimeout(() => { vpCall.micFrame = () => {}; }), true)"
        )
        alert, ended = await call_and_wait(browser, f"http://{gw.base}/", stalled)  # a stuck capture
        assert ended == "Звонок завершён: от микрофона долго не было звука."
        assert alert == ""
