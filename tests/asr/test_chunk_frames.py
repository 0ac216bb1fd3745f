"""The ASR session's audio intake: chunks of several frames (audio.chunk v2) land frame by frame."""

from __future__ import annotations

from prometheus_client import REGISTRY

from tests.waiting import wait_for
from voiceplatform import subjects
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.runtime import TaskRegistry
from voiceplatform.wire import AudioChunk
from vp_asr.session import AsrSession, SessionOptions

FRAME = 320  # 20 ms at 8 kHz


def frames_in() -> float:
    return REGISTRY.get_sample_value("vp_audio_frames_in_total", {"service": "asr"}) or 0.0


async def test_a_chunk_of_several_frames_is_buffered_by_frame_number(broker: MemoryBroker) -> None:
    session = AsrSession(
        broker.bus("asr"), "call-v2", SessionOptions(sample_rate=8000), None, TaskRegistry(), lambda _: None
    )
    await session.open()
    gateway = broker.bus("gateway")
    before = frames_in()
    pcm = [bytes([i + 1]) * FRAME for i in range(4)]
    await gateway.publish(
        subjects.audio_in("call-v2"),
        AudioChunk(call_id="call-v2", seq=0, sample_rate=8000, pcm=b"".join(pcm[:3]), v=2),
    )
    await gateway.publish(
        subjects.audio_in("call-v2"), AudioChunk(call_id="call-v2", seq=3, sample_rate=8000, pcm=pcm[3])
    )
    await wait_for(lambda: session.buffer.max_seq == 3)
    assert session.buffer.cut(0, 80) == b"".join(pcm)
    assert session.buffer.cut(20, 60) == pcm[1] + pcm[2]
    assert frames_in() - before == 4
    await session.close()
