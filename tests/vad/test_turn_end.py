"""The segmenter's pause / resume / end states on synthetic probability sequences (pure, no I/O)."""

from __future__ import annotations

from vp_vad.segmenter import (
    Hangover,
    Segmenter,
    SegmentEvent,
    SpeechEnd,
    SpeechPause,
    SpeechResume,
    SpeechStart,
)

FRAME_MS = 20


def feed(seg: Segmenter, probs: list[float], first_seq: int = 0) -> list[tuple[int, SegmentEvent]]:
    return [(first_seq + i, ev) for i, p in enumerate(probs) for ev in seg.push(first_seq + i, p)]


def speech(n: int) -> list[float]:
    return [0.9] * n


def quiet(n: int) -> list[float]:
    return [0.05] * n


def silence_only() -> Segmenter:
    # today's rule: end after 25 silent frames; a pause is announced after 10
    return Segmenter(5, 25, 0.5, 0.35, pause_frames=10)


def with_model() -> Segmenter:
    # pause after 10 frames; end 5 frames later if complete, after 50 frames in all if not
    return Segmenter(5, 25, 0.5, 0.35, pause_frames=10, hangover=Hangover(15, 50, 0.5))


def test_without_model_pause_then_end_after_silence_frames() -> None:
    events = feed(silence_only(), quiet(3) + speech(20) + quiet(30))
    assert events == [
        (7, SpeechStart(60)),
        (32, SpeechPause(60, 460, 1, 32)),
        (47, SpeechEnd(60, 460)),
    ]
    end = events[-1][1]
    assert isinstance(end, SpeechEnd) and end.eot_probability == -1.0 and not end.truncated


def test_resume_keeps_the_turn_and_the_end_matches_the_last_pause() -> None:
    seg = silence_only()
    events = feed(seg, speech(10) + quiet(12) + speech(10) + quiet(30))
    kinds = [type(ev) for _, ev in events]
    assert kinds == [SpeechStart, SpeechPause, SpeechResume, SpeechPause, SpeechEnd]
    first_pause, resume, last_pause, end = (ev for _, ev in events[1:])
    assert isinstance(first_pause, SpeechPause) and first_pause.offset_ms == 200
    assert resume == SpeechResume(22 * FRAME_MS)
    assert isinstance(last_pause, SpeechPause) and last_pause.pause_id == 2
    assert isinstance(end, SpeechEnd) and end.offset_ms == last_pause.offset_ms == 32 * FRAME_MS
    assert end.start_ms == 0 and end.speech_ms == 640


def test_a_one_frame_blip_in_a_pause_does_not_resume() -> None:
    seg = silence_only()
    events = feed(seg, speech(10) + quiet(12) + speech(1) + quiet(20))
    # the blip counts as silence: the end comes 25 frames after the last real speech frame
    assert [type(ev) for _, ev in events] == [SpeechStart, SpeechPause, SpeechEnd]
    assert events[-1][0] == 9 + 25


def test_model_says_complete_short_hang_over() -> None:
    seg = with_model()
    events = feed(seg, speech(10) + quiet(10))
    pause = events[-1][1]
    assert isinstance(pause, SpeechPause) and events[-1][0] == 19
    assert seg.set_eot(pause.pause_id, 0.9) == []  # 10 silent frames < 15
    more = feed(seg, quiet(10), first_seq=20)
    assert more == [(24, SpeechEnd(0, 200, 0.9))]


def test_model_says_incomplete_long_hang_over() -> None:
    seg = with_model()
    events = feed(seg, speech(10) + quiet(10))
    pause = events[-1][1]
    assert isinstance(pause, SpeechPause)
    assert seg.set_eot(pause.pause_id, 0.2) == []
    more = feed(seg, quiet(60), first_seq=20)
    assert more == [(59, SpeechEnd(0, 200, 0.2))]  # 50 silent frames after seq 9


def test_late_answer_ends_at_once_when_its_hang_over_has_passed() -> None:
    seg = with_model()
    events = feed(seg, speech(10) + quiet(20))  # 20 silent frames, no answer yet: still open
    pause = events[-1][1]
    assert isinstance(pause, SpeechPause) and not any(isinstance(e, SpeechEnd) for _, e in events)
    assert seg.set_eot(pause.pause_id, 0.8) == [SpeechEnd(0, 200, 0.8)]
    assert not seg.in_speech


def test_no_answer_at_all_ends_after_the_long_hang_over() -> None:
    events = feed(with_model(), speech(10) + quiet(60))
    assert [type(ev) for _, ev in events] == [SpeechStart, SpeechPause, SpeechEnd]
    assert events[-1][0] == 59 and events[-1][1] == SpeechEnd(0, 200, -1.0)


def test_failed_model_falls_back_to_silence_frames() -> None:
    seg = with_model()
    pause = feed(seg, speech(10) + quiet(10))[-1][1]
    assert isinstance(pause, SpeechPause)
    assert seg.set_eot(pause.pause_id, None) == []
    assert feed(seg, quiet(30), first_seq=20) == [(34, SpeechEnd(0, 200, -1.0))]


def test_stale_answer_is_ignored_after_resume() -> None:
    seg = with_model()
    pause = feed(seg, speech(10) + quiet(10))[-1][1]
    assert isinstance(pause, SpeechPause)
    resumed = feed(seg, speech(3), first_seq=20)
    assert [type(ev) for _, ev in resumed] == [SpeechResume]
    assert seg.set_eot(pause.pause_id, 0.99) == []
    # the old "complete" does not shorten the next pause: the next end needs its own answer
    events = feed(seg, quiet(60), first_seq=23)
    assert [type(ev) for _, ev in events] == [SpeechPause, SpeechEnd]
    assert events[-1][0] == 22 + 50


def test_lost_frames_cross_pause_and_end_in_one_push() -> None:
    seg = silence_only()
    feed(seg, speech(10))
    events = seg.push(40, 0.9)  # 30 frames lost
    assert [type(ev) for ev in events] == [SpeechPause, SpeechEnd]
    assert events[1] == SpeechEnd(0, 200)


def test_max_turn_truncates_a_caller_who_never_stops() -> None:
    seg = Segmenter(5, 25, 0.5, 0.35, pause_frames=10, max_turn_frames=100)
    events = feed(seg, speech(130))
    assert events[:2] == [(4, SpeechStart(0)), (99, SpeechEnd(0, 2000, -1.0, truncated=True))]
    # speech goes on: a new turn starts after min_speech_frames
    assert events[2] == (104, SpeechStart(100 * FRAME_MS))


def test_max_turn_counts_pauses_too() -> None:
    seg = Segmenter(5, 25, 0.5, 0.35, pause_frames=10, max_turn_frames=40)
    events = feed(seg, speech(20) + quiet(12) + speech(20))
    kinds = [type(ev) for _, ev in events]
    assert kinds[:4] == [SpeechStart, SpeechPause, SpeechResume, SpeechEnd]
    assert events[3] == (39, SpeechEnd(0, 40 * FRAME_MS, -1.0, truncated=True))


def test_pause_never_later_than_the_end() -> None:
    seg = Segmenter(5, 5, 0.5, 0.5, pause_frames=10)
    events = feed(seg, speech(10) + quiet(6))
    assert [type(ev) for _, ev in events] == [SpeechStart, SpeechPause, SpeechEnd]
    assert events[1][0] == events[2][0] == 14


def test_flush_ends_a_paused_turn_at_its_pause_offset() -> None:
    seg = with_model()
    pause = feed(seg, speech(10) + quiet(12))[-1][1]
    assert isinstance(pause, SpeechPause)
    assert seg.flush() == SpeechEnd(0, pause.offset_ms)
    assert seg.flush() is None
