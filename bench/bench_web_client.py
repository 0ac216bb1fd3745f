"""The bundled web client's own share of the delay, in headless Chromium.

A real gateway-web on a private NATS, the scripted robot of the browser tests (it answers each
utterance of the fake microphone 0.5 s after it ends) and the bundled page with Chromium's fake
microphone looping two Russian utterances. In the page it measures, per robot reply:

- **arrival → sound**: the first robot audio frame of a reply arriving on the socket → the playback
  worklet reporting that it started playing (the jitter buffer's prebuffer plus message hops);
- the AudioContext's ``baseLatency`` + ``outputLatency`` (what the browser adds after the worklet).

Prints p50/p95/p99 over the replies of ``--seconds`` of call.

    .venv/bin/python bench/bench_web_client.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``tests`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from tests.audio_fixtures import caller_audio
from tests.gateway_web.browser import Browser
from tests.gateway_web.scripted_robot import SAID, SCRIPT, ScriptedRobot
from voiceplatform.audio import write_wav
from voiceplatform.bus.nats import NatsBus
from voiceplatform.runtime import run_service
from voiceplatform_devstack.devinfra import EmbeddedNats, free_port
from vp_gateway_web.app import GatewayWeb
from vp_gateway_web.settings import GatewayWebSettings

# in the page: when a reply's first frame arrives (after 300 ms without robot audio) and when the
# playback worklet says it started playing
PROBE = """
window.arrivals = []; window.sounds = []; window.lastFrame = 0;
vpCall.ws.addEventListener('message', (m) => {
  if (typeof m.data === 'string') return;
  const now = performance.now();
  if (now - window.lastFrame > 300) window.arrivals.push(now);
  window.lastFrame = now;
});
vpCall.addEventListener('speaking', (e) => { if (e.detail.speaking) window.sounds.push(performance.now()); });
"""


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def main(seconds: float) -> None:
    with tempfile.TemporaryDirectory(prefix="vp-bench-web-") as tmp:
        root = Path(tmp)
        (root / "robots" / "bot").mkdir(parents=True)
        (root / "robots" / "bot" / "config.json").write_text('{"llm": {"provider": "openai"}}')
        wav = root / "caller.wav"
        write_wav(wav, caller_audio(SAID, gap_s=3.0), 16000)
        nats = EmbeddedNats.start(root / "nats")
        port = free_port()
        settings = GatewayWebSettings(
            nats_url=nats.url, robots_dir=root / "robots", http_port=port, default_robot="bot"
        )
        stop = asyncio.Event()
        service = GatewayWeb(settings)
        task = asyncio.create_task(run_service(service, settings, stop=stop))
        robot = ScriptedRobot(await NatsBus.connect(nats.url, "scripted-robot"), SCRIPT)
        await robot.start()
        browser = Browser(root / "profile", mic_wav=wav)
        try:
            while service.bus is None:
                await asyncio.sleep(0.05)
            await browser.start()
            await browser.open(f"http://127.0.0.1:{port}/")
            await browser.js("document.getElementById('start').click()")
            await browser.until("document.getElementById('state').dataset.state === 'live'")
            await browser.js(PROBE)
            await asyncio.sleep(seconds)
            arrivals = await browser.js("window.arrivals")
            sounds = await browser.js("window.sounds")
            latency = await browser.js("(vpCall.ctx.baseLatency || 0) + (vpCall.ctx.outputLatency || 0)")
        finally:
            await browser.stop()
            await robot.stop()
            await robot.bus.close()
            stop.set()
            await asyncio.wait_for(task, 20)
            nats.stop()
    delays = []
    for t in arrivals:
        after = [s for s in sounds if s >= t]
        if after:
            delays.append(after[0] - t)
    print(f"replies: {len(delays)} over {seconds:.0f} s of call")
    print(
        f"arrival → sound (ms): p50 {pct(delays, 50):.1f}  p95 {pct(delays, 95):.1f}  "
        f"p99 {pct(delays, 99):.1f}  max {max(delays, default=float('nan')):.1f}"
    )
    print(f"AudioContext base+output latency: {latency * 1000:.1f} ms (headless: no real device)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    asyncio.run(main(parser.parse_args().seconds))
