"""Playout with a PlaybackClock: turns stay sounding until heard, cuts and pauses go back to the
last byte the caller heard (the phone path, where FreeSWITCH reports what it played)."""

from __future__ import annotations

from voiceplatform.gateway import Playout
from voiceplatform.gateway.heard import SentLog

FRAME = 640  # 20 ms at 16 kHz


class Clock:
    """Stands for the sink: how many of the bytes it was given are not heard yet."""

    def __init__(self) -> None:
        self.unheard = 0

    def unheard_bytes(self) -> int:
        return self.unheard


def send_all(p: Playout, clock: Clock) -> int:
    sent = 0
    while (item := p.next_frame()) is not None:
        sent += len(item[1])
    clock.unheard += sent
    return sent


def two_sentences(p: Playout, turn: str = "t") -> None:
    p.add_audio(turn, 0, b"\x01" * FRAME * 5, last=True, text="раз два три четыре пять")
    p.add_audio(turn, 1, b"\x02" * FRAME * 5, last=True, text="шесть семь восемь девять десять")
    p.set_expected(turn, 2)


def test_a_turn_sent_in_full_stays_sounding_until_it_was_heard() -> None:
    clock = Clock()
    p = Playout(FRAME, clock)
    two_sentences(p)
    send_all(p, clock)
    assert p.pop_finished() == [] and not p.idle  # all sent, nothing heard: still the robot's turn
    clock.unheard = FRAME
    assert p.pop_finished() == [] and p.unheard("t") == FRAME
    clock.unheard = 0
    done = p.pop_finished()
    assert [t.turn_id for t in done] == ["t"] and done[0].played_bytes == 10 * FRAME and p.idle


def test_a_cut_reports_the_words_heard_across_sentence_starts() -> None:
    clock = Clock()
    p = Playout(FRAME, clock)
    two_sentences(p)
    send_all(p, clock)
    clock.unheard = 7 * FRAME  # heard 3 of 10 frames: 60 % of sentence 0
    turn = p.drop("t")
    assert turn is not None and turn.played_bytes == 3 * FRAME
    assert turn.played_text() == "раз два три…"
    assert p.idle


def test_a_pause_of_a_sounding_turn_replays_exactly_what_was_not_heard() -> None:
    clock = Clock()
    p = Playout(FRAME, clock)
    two_sentences(p)
    send_all(p, clock)
    p.pop_finished()
    clock.unheard = 4 * FRAME  # sentence 1's last 4 frames were not heard
    assert p.rewind("t", 0) == 4 * FRAME
    clock.unheard = 0  # the sink dropped them (uuid_break all)
    replay = []
    while (item := p.next_frame()) is not None:
        replay.append(item[1])
    assert replay == [b"\x02" * FRAME] * 4


def test_unheard_bytes_are_the_newest_ones_split_by_turn() -> None:
    log = SentLog()
    log.sent("a", 300)
    log.sent("b", 200)
    log.sent("b", 100)
    assert (log.unheard("b", 250), log.unheard("a", 250)) == (250, 0)
    assert (log.unheard("b", 400), log.unheard("a", 400)) == (300, 100)
    log.trim(250)
    assert log.unheard("a", 250) == 0 and log.unheard("b", 250) == 250
