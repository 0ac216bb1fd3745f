"""A sentence taken by a TTS instance that dies is synthesized by another; the gateway's playout
keeps each chunk once, so the caller hears the sentence once. A live instance busy with a long
sentence keeps it (its progress acks), and nobody synthesizes it twice."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.delivery.helpers import until, work_count
from tests.tts.conftest import write_robot
from tests.tts.helpers import CallOutput, sentence
from tests.tts.stand_in_providers import RATE, LocalFake, SlowTts, tone
from voiceplatform import subjects
from voiceplatform.bus.nats import NatsBus
from voiceplatform.gateway.playout import Playout
from voiceplatform.providers import ProviderRegistry
from voiceplatform.wire import frame_bytes
from vp_tts.app import PROVIDER_ENTRIES, TtsService
from vp_tts.settings import TtsSettings

FREEZE_S = 1.6  # longer than the 1 s ack wait these tests use


class FreezingTts(LocalFake):
    """Streams 20 chunks; the first time, the whole process freezes (blocks its loop) mid-sentence."""

    name = "freezing"
    sample_rate = RATE
    chunks = 20
    frozen = False

    async def stream_synthesize(self, text: str, voice: str) -> AsyncIterator[bytes]:
        for n in range(self.chunks):
            if n == 5 and not FreezingTts.frozen:
                FreezingTts.frozen = True
                time.sleep(FREEZE_S)  # noqa: ASYNC251 - like SIGSTOP: no progress acks, nothing at all
            yield tone(100)


PROVIDERS = ProviderRegistry(
    "tts",
    {
        **PROVIDER_ENTRIES,
        "slow": "tests.tts.stand_in_providers:SlowTts",
        "freezing": "tests.delivery.test_tts_failover:FreezingTts",
    },
)


@pytest.fixture
def tts_settings(tmp_path: Path) -> TtsSettings:
    robots = tmp_path / "tts-robots"
    write_robot(robots, "slow_bot", {"provider": "slow"})
    write_robot(robots, "freezing_bot", {"provider": "freezing"})
    return TtsSettings(robots_dir=robots, festival_preload=False, rhvoice_preload=False, work_ack_wait_s=1.0)


class Instances:
    def __init__(self, nats_url: str, settings: TtsSettings) -> None:
        self.nats_url = nats_url
        self.settings = settings
        self.running: list[tuple[TtsService, NatsBus]] = []

    async def start(self) -> tuple[TtsService, NatsBus]:
        bus = await NatsBus.connect(self.nats_url, f"tts-{len(self.running)}")
        service = TtsService(self.settings, registry=PROVIDERS)
        await service.start(bus)
        self.running.append((service, bus))
        return service, bus


@pytest.fixture
async def instances(private_nats: str, tts_settings: TtsSettings) -> AsyncIterator[Instances]:
    found = Instances(private_nats, tts_settings)
    try:
        yield found
    finally:
        for service, bus in found.running:
            if bus.connected:
                await service.drain(1.0)
            await bus.close()


def heard(out: CallOutput, turn_id: str) -> tuple[bytes, bool]:
    """Sentence 0 as the gateway's playout assembles it from every chunk that arrived, in order."""
    playout = Playout(frame_bytes(RATE))
    for chunk in out.chunks(0, turn_id):
        playout.add_audio(turn_id, 0, chunk.pcm, chunk.last, chunk.text, chunk.seq)
    assembled = playout.turn(turn_id).sentence(0)
    return bytes(assembled.pcm), assembled.done


async def test_a_sentence_of_a_dead_tts_instance_is_heard_once_from_another(
    instances: Instances, private_nats: str
) -> None:
    SlowTts.chunks = 30  # 3 s of audio, streamed over 1.5 s
    call_id = f"tts-fo-{uuid.uuid4().hex[:8]}"
    client = await NatsBus.connect(private_nats, "test")
    try:
        out = await CallOutput.on(client, call_id)
        _, first_bus = await instances.start()
        started = SlowTts.started
        await client.publish(subjects.llm_sentence(call_id), sentence(call_id, "t1", 0, "Долго.", "slow_bot"))
        await out.wait_until(lambda: len(out.chunks(0, "t1")) >= 5)
        await instances.start()
        retries = work_count("tts", "retry")
        await first_bus.close()  # the instance is gone mid-sentence: no more acks, no more audio
        await until(lambda: work_count("tts", "retry") == retries + 1, what="the redelivery")
        await out.wait_until(lambda: out.closed(0), timeout_s=30)
        assert SlowTts.started == started + 2
        pcm, done = heard(out, "t1")
        assert done and len(pcm) == SlowTts.chunks * RATE // 10 * 2  # every chunk once, none twice
        assert len(out.chunks(0, "t1")) > SlowTts.chunks + 1  # the copies did arrive, and were dropped
    finally:
        SlowTts.chunks = 60
        await client.close()


async def test_a_busy_tts_instance_keeps_its_sentence(instances: Instances, private_nats: str) -> None:
    SlowTts.chunks = 60  # 3 s of streaming: longer than two ack waits
    call_id = f"tts-busy-{uuid.uuid4().hex[:8]}"
    client = await NatsBus.connect(private_nats, "test")
    try:
        out = await CallOutput.on(client, call_id)
        await instances.start()
        started = SlowTts.started
        await client.publish(subjects.llm_sentence(call_id), sentence(call_id, "t1", 0, "Долго.", "slow_bot"))
        await out.wait_until(lambda: len(out.chunks(0, "t1")) >= 1)
        await instances.start()  # idle, pulling: it must not get the sentence while the first works
        retries = work_count("tts", "retry")
        await out.wait_until(lambda: out.closed(0), timeout_s=30)
        assert SlowTts.started == started + 1 and work_count("tts", "retry") == retries
        assert [c.seq for c in out.chunks(0, "t1")] == list(range(SlowTts.chunks + 1))
    finally:
        SlowTts.chunks = 60
        await client.close()


async def test_a_tts_instance_that_froze_stops_and_the_sentence_is_heard_once(
    instances: Instances, private_nats: str
) -> None:
    FreezingTts.frozen = False
    call_id = f"tts-frz-{uuid.uuid4().hex[:8]}"
    client = await NatsBus.connect(private_nats, "test")
    try:
        out = await CallOutput.on(client, call_id)
        await instances.start()
        await instances.start()
        given_away = work_count("tts", "given_away")
        await client.publish(
            subjects.llm_sentence(call_id), sentence(call_id, "t1", 0, "Стоп.", "freezing_bot")
        )
        await out.wait_until(lambda: out.closed(0), timeout_s=30)
        assert FreezingTts.frozen and work_count("tts", "given_away") == given_away + 1
        pcm, done = heard(out, "t1")
        assert done and len(pcm) == FreezingTts.chunks * RATE // 10 * 2
        # the frozen original sent nothing after it woke up: chunks 0-4, then the retry's 0-20
        assert [c.seq for c in out.chunks(0, "t1")] == [*range(5), *range(FreezingTts.chunks + 1)]
    finally:
        await client.close()


async def test_a_draining_instance_hands_its_unfinished_sentence_to_another(
    instances: Instances, private_nats: str
) -> None:
    SlowTts.chunks = 40  # 2 s of streaming; the drain gives it 0.3 s
    call_id = f"tts-drain-{uuid.uuid4().hex[:8]}"
    client = await NatsBus.connect(private_nats, "test")
    try:
        out = await CallOutput.on(client, call_id)
        first, _ = await instances.start()
        started = SlowTts.started
        await client.publish(subjects.llm_sentence(call_id), sentence(call_id, "t1", 0, "Долго.", "slow_bot"))
        await out.wait_until(lambda: len(out.chunks(0, "t1")) >= 2)
        await instances.start()
        returned = work_count("tts", "returned")
        await first.drain(0.3)  # SIGTERM: stop pulling, the sentence does not finish in time
        assert work_count("tts", "returned") == returned + 1
        await out.wait_until(lambda: out.closed(0), timeout_s=30)
        assert SlowTts.started == started + 2
        pcm, done = heard(out, "t1")
        assert done and len(pcm) == SlowTts.chunks * RATE // 10 * 2
    finally:
        SlowTts.chunks = 60
        await client.close()
