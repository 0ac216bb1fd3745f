"""A site that copies client.js and its worklets (examples/web_embed) calls a robot on a gateway of
another origin, with a call token its own server got from POST /tokens: the claim that client.js
can be copied, checked in headless Chromium."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from tests.gateway_web.browser import CHROMIUM, Browser
from tests.gateway_web.conftest import GREETING
from tests.stand_ins.uvicorn_app import UvicornStandIn
from tests.waiting import wait_for
from voiceplatform.wire import CallEnded

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)
ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "services" / "gateway-web" / "vp_gateway_web" / "static"
COPIED = ("client.js", "capture-worklet.js", "playback-worklet.js")


def example_server():  # examples/ is not a package: load the example's server.py by path
    spec = importlib.util.spec_from_file_location(
        "web_embed_server", ROOT / "examples" / "web_embed" / "server.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_a_site_with_the_copied_client_calls_the_robot(gateway_factory, tmp_path):
    site_files = tmp_path / "site"
    site_files.mkdir()
    for name in COPIED:  # what the developer copies, unchanged
        shutil.copy(STATIC / name, site_files / name)
    async with gateway_factory(web_api_key="site-key-0123456789") as gw:
        app = example_server().make_app(
            f"http://{gw.base}", "site-key-0123456789", robot="bot", files=site_files
        )
        async with UvicornStandIn(app) as site:
            browser = Browser(tmp_path / "profile")
            try:
                await browser.start()
                await browser.open(f"http://127.0.0.1:{site.port}/", ready="document.getElementById('call')")
                await browser.js("document.getElementById('call').click()")
                await browser.until("document.getElementById('status').textContent === 'live'")
                said = await browser.until(
                    f"document.getElementById('said').textContent.includes({GREETING!r}) && "
                    "document.getElementById('said').textContent"
                )
                assert f"Робот: {GREETING}" in said
                call_id = next(iter(gw.service.calls))
                await wait_for(lambda: len(gw.chunks(call_id)) >= 10, timeout=30)  # the microphone streams
                await browser.js("document.getElementById('hangup').click()")
                assert await browser.until(
                    "document.getElementById('status').textContent.includes('завершён') && "
                    "document.getElementById('status').textContent"
                ) == ("звонок завершён: caller_hangup")
                await wait_for(lambda: gw.lifecycle(call_id, CallEnded), timeout=10)
                assert browser.errors == []
            finally:
                await browser.stop()
