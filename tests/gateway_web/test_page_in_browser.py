"""The bundled page in headless Chromium: it fetches a page token, calls, comes back to the same call
after a network drop, and shows "busy" when the gateway is full."""

from __future__ import annotations

import pytest

from tests.gateway_web.browser import CHROMIUM, Browser, DroppingProxy
from tests.waiting import wait_for
from voiceplatform.wire import CallEnded, CallStarted

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)


async def log_text(browser: Browser) -> str:
    return str(await browser.js("document.getElementById('log').textContent"))


async def test_the_page_calls_resumes_after_a_drop_and_hangs_up(gateway_factory, tmp_path):
    async with gateway_factory(reconnect_grace_s=30) as gw:
        proxy = DroppingProxy(int(gw.base.rsplit(":", 1)[1]))
        await proxy.start()
        browser = Browser(tmp_path / "profile")
        try:
            await browser.start()
            await browser.open(f"http://127.0.0.1:{proxy.port}/")
            await browser.js("document.getElementById('start').click()")
            await wait_for(lambda: gw.service.calls, timeout=30)
            call_id = next(iter(gw.service.calls))
            await wait_for(lambda: len(gw.chunks(call_id)) >= 10, timeout=30)  # the fake microphone
            proxy.drop_all()  # the network drops: the page reconnects with its resume token
            await wait_for(lambda: gw.service.calls[call_id].sink.ws is None, timeout=10)
            heard = len(gw.chunks(call_id))
            await wait_for(lambda: len(gw.chunks(call_id)) > heard + 10, timeout=30)  # audio resumes
            assert "связь восстановлена" in await log_text(browser)
            assert list(gw.service.calls) == [call_id]
            await browser.js("document.getElementById('stop').click()")
            await wait_for(lambda: gw.lifecycle(call_id, CallEnded), timeout=10)
            assert gw.lifecycle(call_id, CallEnded)[0].reason == "caller_hangup"
            assert len([m for m in gw.seen if isinstance(m, CallStarted)]) == 1
        finally:
            await browser.stop()
            await proxy.stop()


async def test_the_page_shows_busy(gateway_factory, tmp_path):
    async with gateway_factory(max_calls=1) as gw:
        holder, _ = await gw.call()
        browser = Browser(tmp_path / "profile")
        try:
            await browser.start()
            await browser.open(f"http://{gw.base}/")
            await browser.js("document.getElementById('start').click()")
            for _ in range(200):
                if "заняты" in await log_text(browser):
                    break
                await browser.js("new Promise(r => setTimeout(r, 50))")
            assert "заняты" in await log_text(browser)
            assert await browser.js("document.getElementById('start').disabled") is False  # can call again
        finally:
            await browser.stop()
            await holder.close()
