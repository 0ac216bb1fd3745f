"""The ElevenLabs provider against a real HTTP + WebSocket stand-in and a real SOCKS5 proxy (pproxy)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pproxy
import pytest
import structlog

from tests.stand_ins.elevenlabs_server import VALID_KEY, ElevenLabsStandIn, audio_for, tone_pcm16
from voiceplatform.config import load_robot
from voiceplatform.providers import (
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderStatusError,
    ProviderTimeoutError,
)
from voiceplatform_devstack.devinfra import free_port
from vp_tts.providers.elevenlabs import ALAW_TO_PCM16, ElevenLabsTts, _AudioDecoder

VOICE = "21m00Tcm4TlvDq8ikWAM"
TEXT = "Здравствуйте! Сколько стоит доставка?"
TRANSPORTS = ["http", "ws"]
MakeProvider = Callable[..., ElevenLabsTts]


@pytest.fixture
async def server() -> AsyncIterator[ElevenLabsStandIn]:
    async with ElevenLabsStandIn() as stand_in:
        yield stand_in


@pytest.fixture
async def make_provider(tmp_path: Path, server: ElevenLabsStandIn) -> AsyncIterator[MakeProvider]:
    made: list[ElevenLabsTts] = []
    numbers = itertools.count()

    def make(
        key: str = VALID_KEY, env: dict[str, str] | None = None, voice: str = VOICE, **options: Any
    ) -> ElevenLabsTts:
        folder = tmp_path / "robots" / f"el_{next(numbers)}"
        folder.mkdir(parents=True)
        opts = {"base_url": server.base_url, "stall_timeout_s": 3.0, **options}
        config = {
            "llm": {"provider": "openai"},
            "tts": {"provider": "elevenlabs", "voice": voice, "providers": {"elevenlabs": opts}},
        }
        (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
        lines = [f"TTS_API_KEY={key}"] + [f"{k}={v}" for k, v in (env or {}).items()]
        (folder / ".env").write_text("\n".join(lines) + "\n", encoding="utf-8")
        provider = ElevenLabsTts(load_robot(folder))
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


async def synth(provider: ElevenLabsTts, text: str = TEXT, voice: str = "") -> list[bytes]:
    async with contextlib.aclosing(provider.stream_synthesize(text, voice)) as stream:
        return [chunk async for chunk in stream]


# ---- audio ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_pcm_16000_streams_the_exact_samples(
    server: ElevenLabsStandIn, make_provider: MakeProvider, transport: str
) -> None:
    provider = make_provider(transport=transport, output_format="pcm_16000")
    chunks = await synth(provider)
    assert provider.sample_rate == 16000
    expected = audio_for(TEXT, "pcm_16000", server.behavior.ms_per_char)
    # the stand-in sends 641-byte chunks: samples split across chunks are joined, never misaligned
    assert len(chunks) > 3 and all(len(c) % 2 == 0 for c in chunks)
    assert b"".join(chunks) == expected
    assert server.recorded.streams[0].finished


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_ulaw_8000_decodes_to_the_g711_table_values(
    server: ElevenLabsStandIn, make_provider: MakeProvider, transport: str
) -> None:
    # μ-law bytes and their linear values from the ITU-T G.711 decoding table
    table = {0x00: -32124, 0x80: 32124, 0xFF: 0, 0x7F: 0, 0x8F: 16764, 0x0F: -16764, 0x9A: 10876, 0xE5: 292}
    server.behavior.audio = bytes(table) * 3
    server.behavior.chunk_bytes = 5
    provider = make_provider(transport=transport, output_format="ulaw_8000")
    pcm = b"".join(await synth(provider))
    assert provider.sample_rate == 8000
    assert np.frombuffer(pcm, "<i2").tolist() == list(table.values()) * 3


async def test_ulaw_tone_decodes_close_to_the_source(
    server: ElevenLabsStandIn, make_provider: MakeProvider
) -> None:
    provider = make_provider(output_format="ulaw_8000")
    decoded = np.frombuffer(b"".join(await synth(provider)), "<i2").astype(np.int32)
    source = tone_pcm16(8000, len(TEXT) * server.behavior.ms_per_char / 1000).astype(np.int32)
    assert decoded.size == source.size
    # μ-law steps near ±8000 are 256 wide: the error stays within half a step
    assert np.max(np.abs(decoded - source)) <= 128
    assert server.recorded.streams[0].query["output_format"] == "ulaw_8000"


def test_alaw_table_and_pcm_carry() -> None:
    assert ALAW_TO_PCM16[[0xD5, 0x55, 0x80, 0x00, 0xAA, 0x2A]].tolist() == [8, -8, 5504, -5504, 32256, -32256]
    decoder = _AudioDecoder("pcm_16000")
    assert [decoder.feed(b"\x01"), decoder.feed(b"\x02\x03"), decoder.feed(b"\x04")] == [
        b"",
        b"\x01\x02",
        b"\x03\x04",
    ]
    decoder.finish()
    decoder.feed(b"\x05")
    with pytest.raises(ProviderProtocolError, match="16-bit sample"):
        decoder.finish()


# ---- requests on the wire -------------------------------------------------------------------------
async def test_http_request_fields_and_usage(server: ElevenLabsStandIn, make_provider: MakeProvider) -> None:
    server.behavior.character_cost = 19
    provider = make_provider(
        model_id="eleven_turbo_v2_5",
        language_code="ru",
        optimize_streaming_latency=3,
        voice_settings={"stability": 0.4, "similarity_boost": 0.8, "speed": 1.1},
    )
    await synth(provider, "  Добрый   день.  ")
    rec = server.recorded.streams[0]
    assert rec.transport == "http" and rec.path == f"/v1/text-to-speech/{VOICE}/stream"
    assert rec.query == {"output_format": "pcm_16000", "optimize_streaming_latency": "3"}
    assert rec.headers["xi-api-key"] == VALID_KEY and rec.headers["content-type"] == "application/json"
    assert rec.body == {
        "text": "Добрый день.",
        "model_id": "eleven_turbo_v2_5",
        "language_code": "ru",
        "voice_settings": {"stability": 0.4, "similarity_boost": 0.8, "speed": 1.1},
    }
    assert (provider.usage.requests, provider.usage.characters, provider.usage.billed_characters) == (
        1,
        12,
        19,
    )


async def test_ws_messages_and_handshake(server: ElevenLabsStandIn, make_provider: MakeProvider) -> None:
    provider = make_provider(
        transport="ws",
        language_code="ru",
        voice_settings={"stability": 0.5, "similarity_boost": 0.8, "use_speaker_boost": False},
        chunk_length_schedule=[120, 160, 250, 290],
    )
    await synth(provider, "Добрый день.")
    rec = server.recorded.streams[0]
    assert rec.transport == "ws" and rec.path == f"/v1/text-to-speech/{VOICE}/stream-input"
    assert rec.query == {"model_id": "eleven_flash_v2_5", "output_format": "pcm_16000", "language_code": "ru"}
    assert rec.headers["xi-api-key"] == VALID_KEY
    assert rec.messages == [
        {
            "text": " ",
            "voice_settings": {"stability": 0.5, "similarity_boost": 0.8, "use_speaker_boost": False},
            "generation_config": {"chunk_length_schedule": [120, 160, 250, 290]},
        },
        {"text": "Добрый день. ", "flush": True},
        {"text": ""},
    ]
    assert rec.finished and provider.usage.characters == len("Добрый день.")


async def test_voice_resolution_and_options(server: ElevenLabsStandIn, make_provider: MakeProvider) -> None:
    other = "EXAVITQu4vr4xnSDxMaL"
    provider = make_provider(voice="alena", voice_id=VOICE, output_format="pcm_8000")
    assert provider.sample_rate == 8000 and provider.ws_url == server.ws_url
    await synth(provider, "Раз.", voice=other)  # the call's voice, when it is an ElevenLabs id
    await synth(provider, "Два.", voice="jane")  # another engine's voice name: the configured id
    assert [s.path.split("/")[3] for s in server.recorded.streams] == [other, VOICE]
    with pytest.raises(ValueError, match="output_format"):
        make_provider(output_format="mp3_44100_128")
    with pytest.raises(ValueError, match=r"extra_forbidden|Extra inputs"):
        make_provider(voice_name="x")
    with pytest.raises(ValueError, match="proxy"):
        make_provider(proxy="ftp://127.0.0.1:1")


async def test_no_request_without_text_voice_or_key(
    server: ElevenLabsStandIn, make_provider: MakeProvider
) -> None:
    assert await synth(make_provider(), "   ") == []
    with pytest.raises(ProviderError, match="TTS_API_KEY is not set") as err:
        await synth(make_provider(key=""))
    assert err.value.retryable is False
    with pytest.raises(ProviderError, match="voice_id") as err:
        await synth(make_provider(voice="alena"))
    assert err.value.retryable is False
    assert server.recorded.streams == []


# ---- errors ---------------------------------------------------------------------------------------
ERRORS = [
    (401, "quota_exceeded", False),
    (403, "only_for_creator+", False),
    (429, "too_many_concurrent_requests", True),
    (429, "system_busy", True),
    (500, "internal_error", True),
    (503, "service_unavailable", True),
]


@pytest.mark.parametrize(("status", "code", "retryable"), ERRORS)
@pytest.mark.parametrize("ws_mode", ["http", "frame", "handshake"])
async def test_errors_map_to_the_tree(
    server: ElevenLabsStandIn,
    make_provider: MakeProvider,
    ws_mode: str,
    status: int,
    code: str,
    retryable: bool,
) -> None:
    server.behavior.fail_status, server.behavior.fail_code = status, code
    server.behavior.fail_message = f"failed for key {VALID_KEY}"
    if ws_mode != "http":
        server.behavior.ws_error_mode = "frame" if ws_mode == "frame" else "handshake"
    provider = make_provider(transport="http" if ws_mode == "http" else "ws")
    with pytest.raises(ProviderStatusError) as err:
        await synth(provider)
    assert err.value.status == status and err.value.retryable is retryable
    assert code in str(err.value) and VALID_KEY not in str(err.value)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_bad_key_is_not_retryable_and_masked(
    server: ElevenLabsStandIn, make_provider: MakeProvider, transport: str
) -> None:
    wrong = "xi-wrong-key-5150"  # the stand-in echoes it back in the error message
    provider = make_provider(key=wrong, transport=transport)
    with pytest.raises(ProviderStatusError) as err:
        await synth(provider)
    assert err.value.status == 401 and err.value.retryable is False
    assert "invalid_api_key" in str(err.value) and wrong not in str(err.value) and "***" in str(err.value)


async def test_key_never_logged(
    server: ElevenLabsStandIn, make_provider: MakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as events:
        for transport in TRANSPORTS:
            await synth(make_provider(transport=transport))
        server.behavior.fail_status, server.behavior.fail_message = 500, f"boom {VALID_KEY}"
        with pytest.raises(ProviderStatusError):
            await synth(make_provider(transport="ws"))
    lines = [r.getMessage() for r in caplog.records] + [json.dumps(e, default=str) for e in events]
    assert any("xi-api-key: ***" in line for line in lines)  # websockets' handshake debug line, masked
    assert not [line for line in lines if VALID_KEY in line]


# ---- cancellation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_closing_the_iterator_closes_the_stream(
    server: ElevenLabsStandIn, make_provider: MakeProvider, transport: str
) -> None:
    server.behavior.chunk_delay_s = 0.1
    provider = make_provider(transport=transport)
    stream = provider.stream_synthesize(TEXT, "")
    assert len(await anext(stream)) > 0
    closed_at = time.monotonic()
    await stream.aclose()
    await asyncio.wait_for(server.recorded.client_closed.wait(), 2.0)
    rec = server.recorded.streams[0]
    assert rec.client_closed_early and not rec.finished
    assert rec.closed_at - closed_at < 0.5 and rec.chunks_sent <= 2


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cancelling_the_task_closes_the_stream(
    server: ElevenLabsStandIn, make_provider: MakeProvider, transport: str
) -> None:
    server.behavior.chunk_delay_s = 0.1
    provider = make_provider(transport=transport)
    got_audio = asyncio.Event()

    async def consume() -> None:
        async with contextlib.aclosing(provider.stream_synthesize(TEXT, "")) as stream:
            async for _ in stream:
                got_audio.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_audio.wait(), 2.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(server.recorded.client_closed.wait(), 2.0)
    assert not server.recorded.streams[0].finished


# ---- bad answers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stall_is_a_timeout(
    server: ElevenLabsStandIn, make_provider: MakeProvider, transport: str
) -> None:
    server.behavior.stall_after = 1
    provider = make_provider(transport=transport, stall_timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError):
        await synth(provider)
    assert time.monotonic() - started < 2.0
    await asyncio.wait_for(server.recorded.client_closed.wait(), 2.0)  # and the socket was closed


@pytest.mark.parametrize(
    ("knob", "error", "match"),
    [
        ("malformed_after", ProviderProtocolError, "malformed JSON"),
        ("bad_base64_after", ProviderProtocolError, "base64"),
        ("truncate_after", ProviderConnectionError, "1011"),
        ("error_frame_after", ProviderStatusError, "system_busy"),
    ],
)
async def test_ws_bad_frames(
    server: ElevenLabsStandIn, make_provider: MakeProvider, knob: str, error: type[ProviderError], match: str
) -> None:
    setattr(server.behavior, knob, 2)
    provider = make_provider(transport="ws")
    chunks: list[bytes] = []
    with pytest.raises(error, match=match) as err:
        async with contextlib.aclosing(provider.stream_synthesize(TEXT, "")) as stream:
            async for chunk in stream:
                chunks.append(chunk)
    assert len(chunks) == 2 and err.value.retryable is True


async def test_ws_normal_close_without_final(server: ElevenLabsStandIn, make_provider: MakeProvider) -> None:
    server.behavior.close_normally_after = 3
    provider = make_provider(transport="ws")
    assert len(await synth(provider)) == 3  # tolerated, like the SDK: the audio that came is kept
    server.behavior.close_normally_after = 0
    with pytest.raises(ProviderProtocolError, match="before any audio"):
        await synth(provider)


async def test_http_truncated_and_non_audio(server: ElevenLabsStandIn, make_provider: MakeProvider) -> None:
    server.behavior.truncate_after = 2
    provider = make_provider()
    with pytest.raises(ProviderProtocolError, match="truncated"):
        await synth(provider)
    server.behavior.truncate_after = None
    server.behavior.content_type = "application/json"
    with pytest.raises(ProviderProtocolError, match="expected audio"):
        await synth(provider)


async def test_unreachable_api_is_a_connection_error(make_provider: MakeProvider) -> None:
    dead = free_port()
    for transport in TRANSPORTS:
        provider = make_provider(transport=transport, base_url=f"http://127.0.0.1:{dead}")
        with pytest.raises(ProviderConnectionError):
            await synth(provider)


# ---- SOCKS5 ---------------------------------------------------------------------------------------
@pytest.fixture
async def socks5() -> AsyncIterator[tuple[str, list[str]]]:
    """A real SOCKS5 server (pproxy) in this loop; its log lines read ``socks5 <client> -> <target>``."""
    port = free_port()
    log_lines: list[str] = []
    listener = await pproxy.Server(f"socks5://127.0.0.1:{port}").start_server(
        {"rserver": [], "verbose": log_lines.append}
    )
    yield f"socks5://127.0.0.1:{port}", log_lines
    listener.close()
    await listener.wait_closed()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("source", ["option", "env"])
async def test_socks5_proxy_carries_the_request(
    server: ElevenLabsStandIn,
    make_provider: MakeProvider,
    socks5: tuple[str, list[str]],
    transport: str,
    source: str,
) -> None:
    proxy_url, proxy_log = socks5
    if source == "option":
        provider = make_provider(transport=transport, proxy=proxy_url)
    else:
        provider = make_provider(transport=transport, env={"TTS_PROXY": proxy_url})
    assert provider.proxy == proxy_url
    pcm = b"".join(await synth(provider))
    assert pcm == audio_for(TEXT, "pcm_16000", server.behavior.ms_per_char)
    tunnels = [
        line for line in proxy_log if line.startswith("socks5 ") and f"-> 127.0.0.1:{server.port}" in line
    ]
    assert len(tunnels) == 1 and len(server.recorded.streams) == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_socks5_proxy_down_means_no_direct_fallback(
    server: ElevenLabsStandIn, make_provider: MakeProvider, transport: str
) -> None:
    provider = make_provider(transport=transport, proxy=f"socks5://127.0.0.1:{free_port()}")
    with pytest.raises(ProviderConnectionError):
        await synth(provider)
    assert server.recorded.streams == []  # nothing went around the proxy
