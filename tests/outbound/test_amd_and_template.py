"""Answering-machine detection from the speech pattern and the words; per-call variables in texts."""

from __future__ import annotations

from voiceplatform.outbound.amd import AmdConfig, AmdDetector, BeepWait
from voiceplatform.outbound.template import fill
from voiceplatform_devstack.freeswitch_outbound import beep, speech_like

RATE = 8000


def silence(seconds: float) -> bytes:
    return b"\x00\x00" * int(RATE * seconds)


def test_a_short_hello_then_silence_is_a_human_decided_right_after_the_hello() -> None:
    d = AmdDetector(AmdConfig(), RATE)
    assert d.feed(silence(0.4) + speech_like(0.5)) is None
    decision = d.feed(silence(1.0))
    assert decision is not None and decision.kind == "human" and decision.reason == "short_hello"
    # 0.4 s before + 0.5 s hello + hello_silence_ms (0.5 s): the greeting can start at once
    assert decision.at_ms == 1400


def test_long_speech_without_a_pause_is_a_machine() -> None:
    d = AmdDetector(AmdConfig(), RATE)
    decision = d.feed(silence(0.1) + speech_like(3.0))
    assert decision is not None and decision.kind == "voicemail" and decision.reason == "long_speech"
    assert decision.at_ms == 2100  # decided after machine_speech_ms of talk, not at its end


def test_short_gaps_inside_a_machine_greeting_do_not_make_it_human() -> None:
    d = AmdDetector(AmdConfig(), RATE)
    piece = speech_like(0.8) + silence(0.2)  # pauses shorter than gap_ms
    decision = d.feed(piece * 4)
    assert decision is not None and decision.kind == "voicemail"


def test_a_callee_who_stays_silent_gets_the_greeting_soon() -> None:
    d = AmdDetector(AmdConfig(silence_ms=1200), RATE)
    decision = d.feed(silence(3.0))
    assert decision is not None and decision.kind == "silence" and decision.at_ms == 1200


def test_words_decide_before_the_pattern() -> None:
    d = AmdDetector(AmdConfig(), RATE)
    d.feed(speech_like(0.6))
    decision = d.words("Абонент не может ответить. Оставьте сообщение после сигнала")
    assert decision is not None and decision.kind == "voicemail" and decision.reason == "words"
    ivr = AmdDetector(AmdConfig(), RATE)
    found = ivr.words("Здравствуйте! Для связи с оператором нажмите ноль")
    assert found is not None and found.kind == "ivr"
    human = AmdDetector(AmdConfig(), RATE)
    assert human.words("Алло?") is None  # a hello decides nothing by its words


def test_the_voicemail_message_waits_for_the_beep_to_end() -> None:
    wait = BeepWait(AmdConfig(beep_silence_ms=600), RATE)
    assert not wait.feed(speech_like(1.0) + beep(0.4))
    assert not wait.feed(silence(0.5))
    assert wait.feed(silence(0.2))


def test_variables_fill_known_placeholders_only() -> None:
    text = 'Здравствуйте, {name}! Долг {debt} ₽. JSON: {"a": 1}, {unknown}'
    assert fill(text, {"name": "Анна", "debt": "1500"}) == (
        'Здравствуйте, Анна! Долг 1500 ₽. JSON: {"a": 1}, {unknown}'
    )
    assert fill(text, {}) == text
