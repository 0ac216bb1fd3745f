import msgpack
import pytest

from voiceplatform.wire import (
    AsrFinal,
    AudioChunk,
    ChatMessage,
    LlmRequest,
    WireError,
    decode,
    encode,
    frame_bytes,
)
from voiceplatform.wire.codec import TYPES_BY_NAME, decode_as


def test_roundtrip_every_field_survives():
    msg = LlmRequest(
        call_id="web-1",
        turn_id="t1",
        robot="r",
        prompt_id="pets",
        system_prompt="Ты помощник",
        history=[ChatMessage(role="user", content="привет", turn_id="t0")],
        user_text="собака",
        sample_rate=16000,
    )
    assert decode(encode(msg)) == msg


def test_wire_is_plain_msgpack_with_readable_keys_and_binary_audio():
    raw = msgpack.unpackb(encode(AudioChunk(call_id="c", seq=3, sample_rate=8000, pcm=b"\x01\x02" * 160)))
    assert raw["type"] == "audio.chunk"
    assert raw["v"] == 1
    assert raw["call_id"] == "c"
    assert isinstance(raw["pcm"], bytes)  # msgpack bin, not base64 text
    assert isinstance(raw["ts_ms"], int)


def test_unknown_keys_are_ignored_for_additive_evolution():
    raw = msgpack.unpackb(encode(AsrFinal(call_id="c", turn_id="t", text="да")))
    raw["new_field_from_the_future"] = [1, 2]
    assert decode(msgpack.packb(raw)).text == "да"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xc1\xc1garbage", "not_msgpack"),
        (msgpack.packb({"type": "no.such", "call_id": "c"}), "unknown_type"),
        (msgpack.packb({"type": "audio.chunk", "call_id": "c"}), "invalid"),
        (msgpack.packb({"type": "asr.final", "call_id": "c", "turn_id": 5, "text": "x"}), "invalid"),
        (
            msgpack.packb({"type": "asr.final", "v": 7, "call_id": "c", "turn_id": "t", "text": "x"}),
            "unsupported_version",
        ),
        (msgpack.packb([1, 2, 3]), "invalid"),
    ],
)
def test_bad_messages_raise_wire_error_with_reason(data, reason):
    with pytest.raises(WireError) as err:
        decode(data)
    assert err.value.reason == reason


def test_decode_as_checks_type():
    data = encode(AsrFinal(call_id="c", turn_id="t", text="x"))
    assert decode_as(data, AsrFinal).text == "x"
    with pytest.raises(WireError):
        decode_as(data, AudioChunk)


def test_frame_validation():
    assert frame_bytes(8000) == 320
    assert frame_bytes(16000) == 640
    good = AudioChunk(call_id="c", seq=0, sample_rate=8000, pcm=b"\0" * 320)
    assert good.problem(8000) is None
    assert good.problem(16000) == "wrong_sample_rate"
    assert (
        AudioChunk(call_id="c", seq=0, sample_rate=8000, pcm=b"\0" * 100).problem(8000) == "wrong_frame_size"
    )


def test_type_names_are_unique_and_dotted():
    assert all("." in name for name in TYPES_BY_NAME)
    assert len(TYPES_BY_NAME) >= 20


def test_a_v2_chunk_holds_consecutive_frames_and_v1_only_one():
    pcm = b"".join(bytes([i]) * 320 for i in range(3))
    chunk = decode_as(encode(AudioChunk(call_id="c", seq=7, sample_rate=8000, pcm=pcm, v=2)), AudioChunk)
    assert chunk.problem(8000) is None
    assert chunk.frames() == [(7, b"\0" * 320), (8, b"\1" * 320), (9, b"\2" * 320)]
    # several frames in a v1 message, a v2 message with a partial frame or none: the wrong size
    assert AudioChunk(call_id="c", seq=0, sample_rate=8000, pcm=pcm).problem(8000) == "wrong_frame_size"
    for bad in (pcm[:-2], b""):
        partial = AudioChunk(call_id="c", seq=0, sample_rate=8000, pcm=bad, v=2)
        assert partial.problem(8000) == "wrong_frame_size"
    single = AudioChunk(call_id="c", seq=4, sample_rate=8000, pcm=pcm[:320])
    assert single.v == 1 and single.frames() == [(4, pcm[:320])]
