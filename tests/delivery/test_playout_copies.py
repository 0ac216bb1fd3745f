"""The gateway's playout keeps each chunk of a sentence once, whichever TTS worker sent it."""

from __future__ import annotations

from voiceplatform.gateway.playout import Playout

FRAME = 640


def chunk(n: int) -> bytes:
    return bytes([n]) * FRAME


def test_a_retry_continues_where_the_original_stopped_and_a_late_original_is_dropped() -> None:
    playout = Playout(FRAME)
    for seq in range(3):  # the original, then it hangs
        assert playout.add_audio("t", 0, chunk(seq), last=False, seq=seq)
    for seq in range(5):  # the retry from the start: its first three are copies
        assert playout.add_audio("t", 0, chunk(seq), last=False, seq=seq) == (seq >= 3)
    assert playout.add_audio("t", 0, b"", last=True, seq=5)
    assert not playout.add_audio("t", 0, chunk(3), last=False, seq=3)  # the original wakes up
    assert not playout.add_audio("t", 0, chunk(6), last=False, seq=6)  # past the sentence's end
    played = [playout.next_frame() for _ in range(6)]
    assert [frame for _, frame in filter(None, played)] == [chunk(n) for n in range(5)]


def test_a_lost_chunk_does_not_stop_the_sentence() -> None:
    playout = Playout(FRAME)
    assert playout.add_audio("t", 0, chunk(0), last=False, seq=0)
    assert playout.add_audio("t", 0, chunk(2), last=True, seq=2)
    assert playout.turn("t").sentence(0).done
