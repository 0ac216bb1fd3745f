"""How one realtime reply becomes the pipeline's messages (sentences, numbered audio, the turn's end)."""

from __future__ import annotations

import numpy as np

from voiceplatform.wire import LlmDone, LlmSentence, Message, TtsAudio
from vp_realtime.reply import RealtimeReply


def _reply(greeting: bool = False) -> RealtimeReply:
    return RealtimeReply(
        call_id="c1",
        turn_id="c1-rt1",
        response_id="resp1",
        robot="bot",
        sample_rate=8000,
        provider_rate=24000,
        provider="realtime-yandex",
        greeting=greeting,
    )


def _pcm(ms: int, rate: int = 24000) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16).tobytes()


def _audio_by_index(msgs: list[Message]) -> dict[int, tuple[int, bool]]:
    out: dict[int, tuple[int, bool]] = {}
    for m in msgs:
        if isinstance(m, TtsAudio):
            size, closed = out.get(m.index, (0, False))
            assert not closed, f"audio after the close of sentence {m.index}"
            out[m.index] = (size + len(m.pcm), m.last)
    return out


def test_sentences_number_the_audio_and_done_counts_them() -> None:
    reply = _reply()
    msgs: list[Message] = []
    msgs += reply.audio(_pcm(300))
    msgs += reply.transcript("Здравствуйте! Чем ")
    msgs += reply.audio(_pcm(300))
    msgs += reply.transcript("могу помочь?")
    msgs += reply.audio(_pcm(200))
    msgs += reply.finish("completed", prompt_tokens=120, completion_tokens=30)

    sentences = [m for m in msgs if isinstance(m, LlmSentence)]
    assert [(s.index, s.text) for s in sentences] == [(0, "Здравствуйте!"), (1, "Чем могу помочь?")]
    assert all(not s.synthesize for s in sentences)
    audio = _audio_by_index(msgs)
    assert set(audio) == {0, 1} and all(closed for _, closed in audio.values())
    # 800 ms at 24 kHz resampled to the call's 8 kHz, nothing lost or duplicated
    assert sum(size for size, _ in audio.values()) == 800 * 8 * 2
    done = msgs[-1]
    assert isinstance(done, LlmDone)
    assert (done.sentences, done.text, done.interrupted) == (2, "Здравствуйте! Чем могу помочь?", False)
    assert (done.prompt_tokens, done.completion_tokens, done.provider) == (120, 30, "realtime-yandex")
    assert reply.audio_ms == 800


def test_audio_after_the_last_sentence_goes_to_the_rest_of_the_text() -> None:
    reply = _reply()
    msgs = reply.transcript("Да. Конечно. Вот") + reply.audio(_pcm(400))
    msgs += reply.finish("completed", 0, 0)
    done = msgs[-1]
    assert isinstance(done, LlmDone) and done.sentences == 3
    assert _audio_by_index(msgs)[2] == (400 * 8 * 2, True)


def test_audio_with_no_text_left_is_one_more_closed_sentence() -> None:
    reply = _reply()
    msgs = reply.transcript("Да. Конечно. Вот.") + reply.audio(_pcm(0))
    msgs += reply.finish("completed", 0, 0)
    done = msgs[-1]
    # every sentence was closed when its text completed; nothing is left open, nothing extra is sent
    assert isinstance(done, LlmDone) and done.sentences == 3
    assert sorted(_audio_by_index(msgs)) == [0, 1, 2]


def test_cancelled_reply_is_interrupted_and_greeting_is_one_sentence() -> None:
    reply = _reply()
    msgs = reply.audio(_pcm(100)) + reply.finish("cancelled", 5, 1)
    done = msgs[-1]
    assert isinstance(done, LlmDone) and done.interrupted and done.sentences == 1

    greeting = _reply(greeting=True)
    msgs = greeting.transcript("Добрый день! ") + greeting.audio(_pcm(200)) + greeting.transcript("Слушаю.")
    msgs += greeting.audio(_pcm(200)) + greeting.finish("completed", 0, 0)
    assert {m.index for m in msgs if isinstance(m, TtsAudio)} == {0}
    sentences = [m for m in msgs if isinstance(m, LlmSentence)]
    assert [(s.index, s.text) for s in sentences] == [(0, "Добрый день! Слушаю.")]
    done = msgs[-1]
    assert isinstance(done, LlmDone) and done.sentences == 1
