"""The ASR fallback chain (``asr.provider`` then ``asr.fallback``) in the running service.

The primary is the real ``yandex`` provider against the gRPC SpeechKit stand-in, scripted to fail;
the fallback is a small local provider defined here (whisper would make these tests slow), which
records the audio it is given so the tests can check it got the same buffered segment.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from tests.asr.caller import FakeCaller
from tests.asr.local import LocalAsr
from tests.stand_ins.yandex_stt_server import YandexSttStandIn
from voiceplatform.audio import Int16Array
from voiceplatform.bus.memory import MemoryBroker, MemoryBus
from voiceplatform.config import AsrConfig
from voiceplatform.providers import ProviderConnectionError, ProviderRegistry, Transcript
from voiceplatform.wire import AsrFinal
from vp_asr.app import AsrService
from vp_asr.settings import AsrSettings

API_KEY = "AQVN-fallback-test-secret-9031"
FOLDER = "b1gfallbackfolder"
YANDEX_FINAL = "Здравствуйте у меня есть собака."


class BackupAsr(LocalAsr):
    """A local provider (built per call): one final naming how much audio it was given."""

    name = "backup"
    sample_rates = (8000, 16000)
    built: ClassVar[int] = 0
    segments: ClassVar[list[bytes]] = []

    def __init__(self, config: AsrConfig) -> None:
        self.config = config
        BackupAsr.built += 1

    async def stream_recognize(
        self, audio: AsyncIterable[bytes], sample_rate: int, language: str
    ) -> AsyncIterator[Transcript]:
        pcm = b"".join([chunk async for chunk in audio])
        BackupAsr.segments.append(pcm)
        yield Transcript("запасной", is_final=False, language="ru")
        yield Transcript(f"запасной {len(pcm)}", is_final=True, language="ru")


class FinalThenFailAsr(LocalAsr):
    """Gives one final, then loses its connection: the turn must not go to the next provider."""

    name = "flaky"
    sample_rates = (8000, 16000)

    def __init__(self, config: AsrConfig) -> None:
        self.config = config

    async def stream_recognize(
        self, audio: AsyncIterable[bytes], sample_rate: int, language: str
    ) -> AsyncIterator[Transcript]:
        async for _ in audio:
            pass
        yield Transcript("первая часть", is_final=True, language="ru")
        raise ProviderConnectionError(self.name, "connection reset")


class BrokenAsr(LocalAsr):
    """Fails on every segment with a non-retryable error."""

    name = "broken"
    sample_rates = (8000, 16000)

    def __init__(self, config: AsrConfig) -> None:
        self.config = config

    async def stream_recognize(
        self, audio: AsyncIterable[bytes], sample_rate: int, language: str
    ) -> AsyncIterator[Transcript]:
        async for _ in audio:
            pass
        raise RuntimeError("a provider bug")
        yield Transcript("", True)  # pragma: no cover - makes this an async generator


PROVIDERS = ProviderRegistry(
    "asr",
    {
        "yandex": "vp_asr.providers.yandex:YandexAsr",
        "backup": "tests.asr.test_asr_fallback:BackupAsr",
        "flaky": "tests.asr.test_asr_fallback:FinalThenFailAsr",
        "broken": "tests.asr.test_asr_fallback:BrokenAsr",
    },
)


def _metric(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _fallbacks(source: str, target: str) -> float:
    return _metric("vp_asr_fallbacks_total", {"from_provider": source, "to_provider": target})


def _errors(provider: str, kind: str) -> float:
    return _metric("vp_provider_errors_total", {"service": "asr", "provider": provider, "kind": kind})


def _speech(seconds: float, seed: int) -> Int16Array:
    """Noise, so every segment's bytes are its own and can be found in what was sent."""
    rng = np.random.default_rng(seed)
    return rng.integers(-8000, 8000, int(16000 * seconds), dtype=np.int16)


@pytest.fixture
async def stt_server() -> AsyncIterator[YandexSttStandIn]:
    async with YandexSttStandIn() as server:
        server.behavior.api_key = API_KEY
        server.behavior.folder_id = FOLDER
        yield server


@pytest.fixture
def robots_root(
    tmp_path: Path, stt_server: YandexSttStandIn, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., str]:
    """Writes a robot into a fresh robots folder; returns its name."""
    for name in ("YANDEX_API_KEY", "YANDEX_IAM_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "robots").mkdir()

    def make(name: str, provider: str, fallback: list[str], api_key: str | None = API_KEY) -> str:
        folder = tmp_path / "robots" / name
        folder.mkdir()
        yandex = {
            "endpoint": stt_server.endpoint,
            "tls": False,
            "folder_id": FOLDER,
            "first_result_timeout_s": 0.5,
            "finish_timeout_s": 1.0,
        }
        asr: dict[str, Any] = {"provider": provider, "fallback": fallback, "providers": {"yandex": yandex}}
        config = {"mode": "pipeline", "llm": {"provider": "openai"}, "asr": asr}
        (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
        (folder / ".env").write_text(f"YANDEX_API_KEY={api_key}\n" if api_key else "", encoding="utf-8")
        return name

    return make


@pytest.fixture
async def asr(
    broker: MemoryBroker, tmp_path: Path, robots_root: Callable[..., str]
) -> AsyncIterator[AsrService]:
    settings = AsrSettings(
        robots_dir=tmp_path / "robots", instance_id="asr-fallback-1", preload_providers=[], drain_timeout_s=5
    )
    service = AsrService(settings, providers=PROVIDERS)
    await service.start(broker.bus("asr"))
    BackupAsr.built, BackupAsr.segments = 0, []
    yield service
    await service.drain(2.0)


async def _turn(caller: FakeCaller, turn_id: str, seed: int) -> tuple[AsrFinal, bytes]:
    speech = _speech(1.0, seed)
    await caller.say(turn_id, speech)
    final = await caller.next_final(wait_s=10)
    assert final.turn_id == turn_id
    return final, speech.tobytes()


async def test_yandex_failures_fall_over_to_the_next_provider_with_the_same_segment(
    asr: AsrService, gateway_bus: MemoryBus, stt_server: YandexSttStandIn, robots_root: Callable[..., str]
) -> None:
    caller = FakeCaller(gateway_bus, robot=robots_root("yfall", "yandex", ["backup"]))
    assert (await caller.assign()).accepted
    behavior = stt_server.behavior
    script: list[tuple[str, Callable[[], None], str]] = [
        # a bad key is not retryable, but it must not silence the robot
        ("auth", lambda: setattr(behavior, "api_key", "another-key"), "status"),
        ("unavailable", lambda: setattr(behavior, "fail_code", grpc.StatusCode.UNAVAILABLE), "status"),
        ("stall", lambda: setattr(behavior, "stall", True), "timeout"),
    ]
    for number, (turn_id, break_yandex, kind) in enumerate(script):
        behavior.api_key, behavior.fail_code, behavior.stall = API_KEY, None, False
        break_yandex()
        fallbacks, errors = _fallbacks("yandex", "backup"), _errors("yandex", kind)
        final, sent = await _turn(caller, turn_id, seed=number)

        assert final.provider == "backup", turn_id
        segment = BackupAsr.segments[-1]
        assert final.text == f"запасной {len(segment)}"
        assert len(segment) == final.audio_ms * 32
        assert sent in segment, "the fallback got the whole buffered utterance"
        assert _fallbacks("yandex", "backup") == fallbacks + 1
        assert _errors("yandex", kind) == errors + 1
        assert len(stt_server.recorded.streams) == number + 1, "yandex was tried once per turn"
    stalled = stt_server.recorded.streams[-1]
    assert stalled.audio_bytes == len(BackupAsr.segments[-1]), "yandex and the fallback got the same audio"
    # the stand-in sees the cancel through the RPC's done callback, a moment after the client sent it
    await asyncio.wait_for(stt_server.recorded.client_cancelled.wait(), 2.0)
    assert stalled.client_cancelled, "the stalled stream was closed by the watchdog"

    # yandex healthy again: its final ends the chain, the fallback is not asked
    behavior.api_key, behavior.fail_code, behavior.stall = API_KEY, None, False
    fallbacks, asked = _fallbacks("yandex", "backup"), len(BackupAsr.segments)
    final, _ = await _turn(caller, "healthy", seed=9)
    assert (final.provider, final.text) == ("yandex", YANDEX_FINAL)
    assert _fallbacks("yandex", "backup") == fallbacks
    assert len(BackupAsr.segments) == asked
    assert caller.errors.empty(), "no stage error while the chain recovers every turn"
    assert BackupAsr.built == 1, "a local provider is built once per call"


async def test_no_fallback_once_a_final_was_produced(
    asr: AsrService, gateway_bus: MemoryBus, robots_root: Callable[..., str]
) -> None:
    caller = FakeCaller(gateway_bus, robot=robots_root("flakybot", "flaky", ["backup"]))
    assert (await caller.assign()).accepted
    fallbacks, errors = _fallbacks("flaky", "backup"), _errors("flaky", "connection")
    final, _ = await _turn(caller, "flaky-1", seed=1)
    assert (final.provider, final.text) == ("flaky", "первая часть")
    assert BackupAsr.segments == []
    assert _fallbacks("flaky", "backup") == fallbacks
    assert _errors("flaky", "connection") == errors + 1, "the failure after the final is still counted"
    assert caller.errors.empty()


async def test_a_provider_that_cannot_be_built_is_skipped(
    asr: AsrService, gateway_bus: MemoryBus, stt_server: YandexSttStandIn, robots_root: Callable[..., str]
) -> None:
    """No YANDEX_API_KEY and an unknown name in the chain: the call runs on what is left."""
    robot = robots_root("nokeybot", "yandex", ["nosuch", "backup"], api_key=None)
    construct_errors = _errors("yandex", "construct")
    caller = FakeCaller(gateway_bus, robot=robot)
    assert (await caller.assign()).accepted
    assert _errors("yandex", "construct") == construct_errors + 1
    final, _ = await _turn(caller, "nokey-1", seed=2)
    assert final.provider == "backup"
    assert stt_server.recorded.streams == [], "yandex was never built, so never called"
    assert caller.errors.empty(), "a call with a working provider gets no provider_unavailable error"


async def test_a_whole_chain_failing_reports_one_stage_error(
    asr: AsrService, gateway_bus: MemoryBus, stt_server: YandexSttStandIn, robots_root: Callable[..., str]
) -> None:
    stt_server.behavior.fail_code = grpc.StatusCode.UNAVAILABLE
    caller = FakeCaller(gateway_bus, robot=robots_root("deadbot", "yandex", ["broken"]))
    assert (await caller.assign()).accepted
    fallbacks, crashes = _fallbacks("yandex", "broken"), _errors("broken", "internal")
    await caller.say("dead-1", _speech(0.6, seed=3))
    error = await caller.next_error()
    assert (error.stage, error.turn_id, error.kind) == ("asr", "dead-1", "internal")
    assert "UNAVAILABLE" in error.detail and "broken: RuntimeError" in error.detail
    assert error.retryable, "yandex's failure was a passing one"
    assert _fallbacks("yandex", "broken") == fallbacks + 1
    assert _errors("broken", "internal") == crashes + 1
    assert caller.finals.empty()


async def test_an_empty_chain_still_reports_provider_unavailable(
    asr: AsrService, gateway_bus: MemoryBus, robots_root: Callable[..., str]
) -> None:
    caller = FakeCaller(gateway_bus, robot=robots_root("nonebot", "yandex", ["nosuch"], api_key=None))
    assert (await caller.assign()).accepted
    error = await caller.next_error()
    assert (error.kind, error.turn_id) == ("provider_unavailable", "")
    assert "YANDEX_API_KEY is not set" in error.detail and "nosuch" in error.detail
    await caller.say("none-1", _speech(0.6, seed=4))
    turn_error = await caller.next_error()
    assert (turn_error.kind, turn_error.turn_id) == ("provider_unavailable", "none-1")
