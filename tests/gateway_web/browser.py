"""Test helpers for the bundled page in a real browser: headless Chromium driven over the DevTools
protocol, and a TCP proxy whose connections can be cut as a network drop would."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class DroppingProxy:
    """Forwards 127.0.0.1:<port> to the gateway; ``drop_all`` aborts every connection both ways."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._conns: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._conns += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def drop_all(self) -> None:
        for writer in self._conns:
            writer.transport.abort()
        self._conns.clear()

    async def stop(self) -> None:
        self.drop_all()
        if self._server is not None:
            self._server.close()


class Browser:
    """One headless Chromium page driven over the DevTools protocol; ``js`` evaluates in the page.

    ``mic_wav``: what the fake microphone says (looped); ``allow_mic``: the permission prompt is
    accepted (fake UI) or, when False, the microphone is denied to every page; ``fake_mic``: False
    leaves the browser with the machine's own devices (none here). ``hosts`` maps a name to
    127.0.0.1 (``voice.test``: a non-localhost http origin, not a secure context). Uncaught page
    errors are collected in ``errors``.
    """

    def __init__(
        self,
        profile: Path,
        *,
        mic_wav: Path | None = None,
        allow_mic: bool = True,
        fake_mic: bool = True,
        hosts: tuple[str, ...] = (),
    ) -> None:
        self.profile = profile
        self.mic_wav = mic_wav
        self.allow_mic = allow_mic
        self.fake_mic = fake_mic
        self.hosts = hosts
        self.proc: asyncio.subprocess.Process | None = None
        self.ws: ClientConnection | None = None
        self.errors: list[str] = []
        self._id = 0

    def flags(self) -> list[str]:
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--autoplay-policy=no-user-gesture-required",
            "--window-size=900,1000",
            "--remote-debugging-port=0",
            f"--user-data-dir={self.profile}",
        ]
        if self.allow_mic:
            flags.append("--use-fake-ui-for-media-stream")
        if self.fake_mic:
            flags.append("--use-fake-device-for-media-stream")
        if self.mic_wav is not None:
            flags.append(f"--use-file-for-fake-audio-capture={self.mic_wav}")
        if self.hosts:
            flags.append("--host-resolver-rules=" + ",".join(f"MAP {h} 127.0.0.1" for h in self.hosts))
        return flags

    async def start(self) -> None:
        assert CHROMIUM is not None
        self.profile.mkdir(parents=True, exist_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            CHROMIUM,
            *self.flags(),
            "about:blank",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = self.profile / "DevToolsActivePort"
        for _ in range(600):
            if port_file.is_file() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with httpx.AsyncClient() as client:
            targets = (await client.get(f"http://127.0.0.1:{port}/json/list")).json()
            version = (await client.get(f"http://127.0.0.1:{port}/json/version")).json()
        page = next(t for t in targets if t["type"] == "page")
        self.ws = await connect(page["webSocketDebuggerUrl"], max_size=2**26)
        await self._call("Runtime.enable")
        if not self.allow_mic:
            async with connect(version["webSocketDebuggerUrl"]) as browser_ws:
                await browser_ws.send(
                    json.dumps(
                        {
                            "id": 1,
                            "method": "Browser.setPermission",
                            "params": {"permission": {"name": "audio_capture"}, "setting": "denied"},
                        }
                    )
                )
                await browser_ws.recv()

    async def _call(self, method: str, **params: Any) -> dict[str, Any]:
        assert self.ws is not None
        self._id += 1
        await self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(await self.ws.recv())
            if message.get("method") == "Runtime.exceptionThrown":
                details = message["params"]["exceptionDetails"]
                self.errors.append(str(details.get("exception", {}).get("description") or details))
            if message.get("id") == self._id:
                return dict(message.get("result", {}))

    async def open(self, url: str, ready: str = "document.getElementById('robot')?.options.length") -> None:
        """Navigate, then wait until the page is loaded and ``ready`` (the robot list) is truthy."""
        await self._call("Page.navigate", url=url)
        for _ in range(300):
            if await self.js("document.readyState") == "complete" and await self.js(ready):
                return
            await asyncio.sleep(0.1)

    async def js(self, expression: str) -> Any:
        result = await self._call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    async def text(self, element_id: str) -> str:
        return str(await self.js(f"document.getElementById({element_id!r}).textContent"))

    async def until(self, expression: str, timeout: float = 30.0) -> Any:
        """Wait until ``expression`` is truthy in the page; returns its value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = await self.js(expression)
            if value or loop.time() > deadline:
                assert value, f"page never had: {expression}"
                return value
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path) -> None:
        shot = await self._call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))

    async def stop(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
