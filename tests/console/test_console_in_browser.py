"""The operator console in headless Chromium against a real recorder: the calls list, a call with its
transcript, latency waterfall and a recording that plays; the read-only token hides callers and
transcripts; the live view shows a call as it starts. Screenshots go to docs/img."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from tests.console.browser import ConsoleBrowser
from tests.console.conftest import Console
from tests.console.scenario import CALLER, demo_call
from tests.recorder.conftest import OPERATOR_TOKEN, READONLY_TOKEN, new_call_id, settle
from tests.recorder.test_recorder import play
from voiceplatform import subjects
from voiceplatform.bus.nats import NatsBus
from voiceplatform.wire import CallEnded, CallStarted, Message

# VP_CONSOLE_SCREENSHOTS=1 writes the screenshots the docs show; else they go to the test's folder
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
MINUTE_MS = 60_000


async def two_calls(console: Console, gateway_bus: NatsBus, js_nats_url: str) -> tuple[str, str]:
    # each call within one minute (5 s past its start), so per-minute figures are the call's own
    minute = int(time.time() * 1000) // MINUTE_MS * MINUTE_MS + 5000
    recorded, older = new_call_id(), new_call_id()
    events: list[tuple[str, Message]] = [
        *demo_call(older, minute - 70 * MINUTE_MS, None, robot="topic_prompts_russian"),
        *demo_call(recorded, minute - 20 * MINUTE_MS, console.recordings),
    ]
    await play(gateway_bus, events)
    await settle(console.recorder, js_nats_url, len(events), within_s=30)
    return recorded, older


async def test_operator_lists_opens_reads_and_plays_a_call(
    console: Console, browser: ConsoleBrowser, gateway_bus: NatsBus, js_nats_url: str, tmp_path: Path
) -> None:
    shots = DOCS_IMG if os.environ.get("VP_CONSOLE_SCREENSHOTS") else tmp_path
    recorded, older = await two_calls(console, gateway_bus, js_nats_url)
    await browser.goto(f"{console.base}/?token={OPERATOR_TOKEN}")  # once: then kept in sessionStorage
    await browser.view_ready("calls")
    assert await browser.js("location.pathname + location.search") == "/console/"  # the token left the URL
    assert await browser.js("sessionStorage.getItem('vp_console_token')") == OPERATOR_TOKEN
    listed = await browser.js("[...document.querySelectorAll('#calls tr')].map(r => r.dataset.call)")
    assert listed == [recorded, older]
    assert (
        await browser.js(f"document.querySelector('[data-call=\"{recorded}\"] .caller').textContent")
        == CALLER
    )
    await browser.screenshot(shots / "console-calls.png")
    assert (shots / "console-calls.png").read_bytes().startswith(b"\x89PNG")

    # search by words of the transcript, through the filter form
    await browser.js("document.querySelector('#filters [name=q]').value = 'заказ'")
    await browser.js("document.querySelector('#filters [name=robot]').value = 'topic_prompts_russian'")
    await browser.js("document.querySelector('#filters').requestSubmit()")
    await browser.until(
        "document.getElementById('view').dataset.ready === '1' && location.hash.includes('q=')"
        " && document.querySelectorAll('#calls tr').length === 1"
    )
    assert await browser.js("document.querySelector('#calls tr').dataset.call") == older

    await browser.js(f"location.hash = '#/call/{recorded}'")
    await browser.view_ready("call")
    transcript = await browser.js("document.getElementById('transcript').textContent")
    assert (
        "здравствуйте, сколько стоит доставка" in transcript
        and "Доставка по городу бесплатная." in transcript
    )
    bars = await browser.js(
        "[...document.querySelectorAll('#waterfall g.turn')].map(g =>"
        " [g.dataset.turn, [...g.querySelectorAll('rect.bar')].map(r => r.classList[1])])"
    )
    # both turns: ASR → (routing, when the prompt switched) → LLM → TTS → played
    assert bars == [
        [f"{recorded}-t1", ["asr", "llm", "tts", "play"]],
        [f"{recorded}-t2", ["asr", "route", "llm", "tts", "play"]],
    ]
    errors = await browser.js("document.getElementById('errors').textContent")
    assert "tts: timeout" in errors and "festival did not answer in 3 s" in errors
    assert "barge-in" in await browser.js("document.getElementById('transcript').textContent")
    usage = await browser.js("document.getElementById('usage').textContent")
    assert "whisper" in usage and "120 + 14 tokens" in usage and "30 chars" in usage

    duration = await browser.until(
        "(a => a && a.duration > 0 && a.duration)(document.querySelector('#recording audio'))"
    )
    assert 3.9 < duration < 4.1  # the 4 s stereo file, loaded with the bearer token
    await browser.js("document.querySelector('#recording audio').play().then(() => true)")
    await browser.until("document.querySelector('#recording audio').currentTime > 0.3")
    await browser.js("document.querySelector('#recording audio').pause()")
    await browser.js("window.scrollTo(0, 0)")
    await browser.screenshot(shots / "console-call.png", height=1500)

    # latency over time: p50/p95 per minute from PostgreSQL, one chart per figure
    await browser.js("location.hash = '#/latency?bucket=minute'")
    await browser.view_ready("latency")
    charts = await browser.js(
        "[...document.querySelectorAll('svg.latency-chart')].map(c => c.dataset.figure)"
    )
    assert charts == ["voice_to_voice", "asr", "llm_first_sentence", "tts_first_audio"]
    dots = await browser.js(
        "[...document.querySelectorAll('svg[data-figure=voice_to_voice] circle title')]"
        ".map(t => t.textContent)"
    )
    # two calls, each two turns in one minute: voice-to-voice 950 and 1020 ms → p50 985, p95 1016
    # (1016.5 in floating point, just under)
    assert sorted(d.split(": ")[1].split(" ms")[0] for d in dots) == ["1016", "1016", "985", "985"]
    await browser.screenshot(shots / "console-latency.png")


async def test_readonly_token_sees_no_caller_no_transcript_no_recording(
    console: Console, browser: ConsoleBrowser, gateway_bus: NatsBus, js_nats_url: str
) -> None:
    recorded, _ = await two_calls(console, gateway_bus, js_nats_url)
    await browser.goto(f"{console.base}/console/")
    await browser.until("!document.getElementById('login').hidden")  # no token yet: the sign-in form
    await browser.js(f"document.getElementById('token').value = {json.dumps(READONLY_TOKEN)}")
    await browser.js("document.getElementById('login').requestSubmit()")
    await browser.view_ready("calls")
    callers = await browser.js("[...document.querySelectorAll('#calls .caller')].map(c => c.textContent)")
    assert callers == ["—", "—"]
    assert await browser.js("document.querySelector('#filters [name=q]')") is None  # no search
    page = await browser.js("document.body.textContent")
    assert CALLER not in page

    await browser.js(f"location.hash = '#/call/{recorded}'")
    await browser.view_ready("call")
    # the figures stay (routing is not split out: the prompt switch's moment is in the transcript)
    assert await browser.js("document.querySelectorAll('#waterfall rect.bar').length") == 8
    assert await browser.js("document.getElementById('transcript')") is None
    assert await browser.js("document.querySelector('audio')") is None
    assert await browser.js("document.getElementById('no-transcript') !== null")
    page = await browser.js("document.body.textContent")
    assert CALLER not in page and "доставка" not in page


async def test_live_view_shows_a_call_as_it_starts_and_ends(
    console: Console, browser: ConsoleBrowser, gateway_bus: NatsBus
) -> None:
    await browser.goto(f"{console.base}/console/?token={OPERATOR_TOKEN}#/live")
    await browser.view_ready("live")
    await browser.until("document.getElementById('view').dataset.live === '1'")
    # the feed is subscribed once the recorder counts a listener
    for _ in range(300):
        if console.recorder.live.listening:
            break
        await browser.js("new Promise(r => setTimeout(r, 50))")
    assert console.recorder.live.listening == 1
    call_id = new_call_id()
    lc = subjects.lifecycle(call_id)
    now = int(time.time() * 1000)
    await play(
        gateway_bus,
        [(lc, CallStarted(call_id=call_id, robot="pipeline_russian", channel="phone", caller="+7123",
                          sample_rate=8000, ts_ms=now))],
    )  # fmt: skip
    await browser.until(f"document.querySelector('#live-calls tr[data-call=\"{call_id}\"]') !== null")
    row = await browser.js(f"document.querySelector('#live-calls tr[data-call=\"{call_id}\"]').textContent")
    assert "pipeline_russian" in row and "+7123" in row
    await play(
        gateway_bus, [(lc, CallEnded(call_id=call_id, reason="hangup", duration_ms=900, ts_ms=now + 900))]
    )
    await browser.until(
        f'document.querySelector(\'#live-feed li[data-type="call.ended"][data-call="{call_id}"]\') !== null'
    )


async def test_a_recorder_stops_while_a_console_follows_live_events(
    console: Console, browser: ConsoleBrowser
) -> None:
    await browser.goto(f"{console.base}/console/?token={OPERATOR_TOKEN}#/live")
    await browser.view_ready("live")
    for _ in range(300):
        if console.recorder.live.listening:
            break
        await browser.js("new Promise(r => setTimeout(r, 50))")
    assert console.recorder.live.listening == 1
    console.stop.set()  # SIGTERM: the open event stream must not hold up the HTTP server's shutdown
    await asyncio.wait_for(console.running, 30)
    await browser.until("document.getElementById('live-status').textContent.includes('retrying')")
