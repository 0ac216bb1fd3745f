"""The console in headless Chromium: the gateway tests' CDP driver (tests/gateway_web/browser.py,
used as it is) plus what the console needs: open a page and wait for a view, screenshots."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

from tests.gateway_web.browser import Browser


class ConsoleBrowser(Browser):
    async def cdp(self, method: str, **params: Any) -> dict[str, Any]:
        return await self._call(method, **params)

    async def goto(self, url: str) -> None:
        await self.cdp("Page.navigate", url=url)
        await self.until("document.readyState === 'complete'")

    async def until(self, expression: str, timeout_s: float = 30.0) -> Any:
        """Poll ``expression`` in the page until it is truthy; returns its value."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            value = await self.js(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"the page never had {expression}")
            await asyncio.sleep(0.1)

    async def view_ready(self, view: str) -> None:
        await self.until(
            f"document.getElementById('view').dataset.view === {json.dumps(view)}"
            " && document.getElementById('view').dataset.ready === '1'"
        )

    async def screenshot(self, path: Path, width: int = 1280, height: int = 900) -> None:
        await self.cdp(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        shot = await self.cdp("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        await asyncio.to_thread(_write, path, base64.b64decode(shot["data"]))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
