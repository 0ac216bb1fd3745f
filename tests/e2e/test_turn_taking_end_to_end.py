"""Turn-taking through the whole platform (every stage its own process over real NATS, the real
offline engines): a caller who pauses mid-sentence gets one reply to the whole sentence, and "ага"
said over the robot's reply does not cut it.

Both scenarios are placed by what the caller hears (the reply has started, it has been heard for a
while), not by fixed delays, so a busy machine changes the timings but not what is checked.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.audio_fixtures import festival_available, utterance
from tests.e2e.conftest import turns_summary
from tests.e2e.test_call_end_to_end import stored
from voiceplatform.cli.call import place_call

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(not festival_available(), reason="festival with the Russian voice is not installed"),
]
RATE = 16000


def silence(s: float) -> np.ndarray:
    return np.zeros(int(RATE * s), np.int16)


async def test_caller_pausing_mid_sentence_gets_exactly_one_reply_to_the_whole_sentence(
    platform, postgres_dsn, redis_url
):
    first = utterance("Скажите, пожалуйста, сколько стоит")
    second = utterance("доставка до дома?")
    caller = np.concatenate([silence(3.5), first, silence(0.9), second, silence(1.0)])
    result = await place_call(platform.url, "pipeline_russian", caller, tail_s=25)
    summary = turns_summary(result.turns)
    print(summary)
    played = [t for t in result.turns if t.get("outcome") == "played"]
    assert len(played) == 1, (summary, platform.logs_text())
    heard = played[0]["user_text"].lower()
    assert "скаж" in heard and "достав" in heard, heard  # both halves recognized as one utterance
    assert "Доставляем" in played[0]["bot_text"]
    # a piece cut off by the continuation is on record only if the caller heard its reply start
    # (it then stopped within continuation_played_ms); never a reply of its own played through
    others = [t for t in result.turns if t is not played[0]]
    assert all(t.get("outcome") == "continued" and t["voice_to_voice_ms"] for t in others), summary
    _row, turns, *_ = await stored(postgres_dsn, redis_url, result.call_id)
    answered = [t for t in turns if t["bot_text"] and not t["interrupted"]]
    assert len(answered) == 1 and "достав" in answered[0]["user_text"].lower()


@pytest.mark.xfail(
    strict=False,
    reason="CPU-dependent: on an AVX2-only EPYC the reply is cut instead of paused (Whisper int8 hears "
    "festival's 'ага' as 'Адгер'), for the code of the last green CI (9d778a4) too; passes where that CI ran",
)
async def test_a_backchannel_over_the_reply_does_not_cut_it(platform):
    question = utterance("Расскажите, что вы продаёте?")
    caller = np.concatenate([silence(3.5), question, silence(0.5)])
    result = await place_call(
        platform.url,
        "pipeline_russian",
        caller,
        tail_s=25,
        over_reply=(np.concatenate([utterance("ага"), silence(0.5)]), 1.5),
    )
    summary = turns_summary(result.turns)
    print(summary)
    kinds = [e["type"] for e in result.events]
    # the platform did hear the caller over the robot (else this test would check nothing)
    assert kinds.count("vad.speech_started") >= 2, result.events
    assert "playback.paused" in kinds and "playback.resumed" in kinds, (kinds, summary)
    reply = [t for t in result.turns if "продаём" in (t.get("bot_text") or "")]
    assert reply and reply[0]["outcome"] == "played" and not reply[0]["interrupted"], summary
    assert not [t for t in result.turns if t.get("outcome") == "cut"], summary
    backchannel = [t for t in result.turns if t.get("outcome") == "backchannel"]
    assert backchannel, summary
    # the backchannel got no reply of its own
    replies = [t for t in result.turns if t.get("bot_text") and t.get("outcome") == "played"]
    assert len(replies) == 1, summary
