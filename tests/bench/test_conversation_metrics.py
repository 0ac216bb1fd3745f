"""The conversation benchmark's analysis on hand-made client logs (no platform, no audio)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.conversation_call import CallLog, Played
from bench.conversation_corpus import BY_ID, LABELS, SCRIPTS, UTTERANCES
from bench.conversation_metrics import analyze_call, expected_replies, normalize, summarize, wer

REPO = Path(__file__).resolve().parents[2]
DIALOG = json.loads((REPO / "robots" / "pipeline_russian" / "dialog.json").read_text(encoding="utf-8"))
TEXTS = {u.uid: (u.full_text, u.label) for u in UTTERANCES}


def frames(start: float, end: float) -> list[float]:
    return [round(start + i * 0.02, 3) for i in range(int((end - start) / 0.02))]


def test_normalize_lowercases_spells_digits_and_drops_punctuation() -> None:
    assert normalize("Ещё 5 котят, да-да!") == "еще пять котят да да"
    assert wer(["Ей пять лет."], ["ей 5 лет"]) == 0.0
    assert wer(["Сколько стоит ваш корм?"], ["Сколько стоит корм"]) == 0.25


def test_every_label_but_repeat_has_an_intent_on_main_dialog() -> None:
    for label, (state, keyword) in LABELS.items():
        found = expected_replies(DIALOG, state, keyword)
        assert bool(found) == (label != "repeat"), label
    assert all(BY_ID[uid].label in LABELS for script in SCRIPTS for uid, _ in script if BY_ID[uid].label)


def test_split_pause_with_a_stale_reply_and_a_cut_backchannel() -> None:
    # caller: "price" (one turn, one reply), then a pause sentence split in two turns whose first
    # half's reply arrives after the second half started; a backchannel over it gets a flush
    price_reply = expected_replies(DIALOG, "main", "цена")[0]
    events = [
        {"type": "vad.speech_started", "turn_id": "t1", "t": 1.1},
        {"type": "asr.final", "turn_id": "t1", "text": "Сколько стоит ваш корм", "t": 3.0},
        {"type": "bot.sentence", "turn_id": "t1", "index": 0, "text": price_reply, "t": 3.1},
        {
            "type": "turn.metrics",
            "turn_id": "t1",
            "bot_text": price_reply,
            "voice_to_voice_ms": 500,
            "t": 6.0,
        },
        {"type": "vad.speech_started", "turn_id": "t2", "t": 10.1},
        {"type": "vad.speech_started", "turn_id": "t3", "t": 12.1},
        {"type": "asr.final", "turn_id": "t2", "text": "Подскажите пожалуйста", "t": 12.5},
        {"type": "bot.sentence", "turn_id": "t2", "index": 0, "text": "Извините", "t": 12.6},
        {"type": "vad.speech_started", "turn_id": "t4", "t": 15.2},
        {"type": "playback.flush", "turn_id": "t2", "t": 15.2},
        {"type": "turn.cancelled", "turn_id": "t4", "reason": "backchannel", "t": 15.9},
        {"type": "asr.final", "turn_id": "t3", "text": "как у вас работает доставка", "t": 16.0},
        {"type": "some.future.event", "t": 16.1},
    ]
    log = CallLog("festival", 16000, "web", events=events)
    log.audio = frames(3.3, 6.0) + frames(13.0, 15.2)
    log.played = [
        Played("price", "plain", "festival", 16000, 1.0, 1.3, 2.5, t_end=2.8),
        Played("delivery_p", "pause", "festival", 16000, 10.0, 10.3, 14.0, t_second_start=12.0, t_end=14.3),
        Played("bc_ugu", "backchannel", "festival", 16000, 15.0, 15.1, 15.5, t_end=15.7, parent=1),
    ]
    results, spurious = analyze_call(log, TEXTS, DIALOG, LABELS)

    price, pause, bc = results
    assert (price.caller_turns, price.replies, price.stale, price.intent_ok) == (1, 1, 0, True)
    assert price.v2v_ms == 800
    assert (pause.caller_turns, pause.replies, pause.stale) == (2, 1, 1)
    assert pause.hyp == "Подскажите пожалуйста как у вас работает доставка"
    assert pause.intent_ok is False  # the only reply heard was the fallback to the first half
    assert bc.over_speech and bc.cut and bc.replies == 0
    assert spurious == 0
    summary = summarize(results, {"price|festival|16000": "сколько стоит ваш корм"}, spurious, 1)
    assert summary["split_rate"] == 0.5
    assert summary["stale_replies"] == 1
    assert summary["backchannel_cuts"] == 1
    assert summary["wer_platform"] == 0.0
    assert summary["wer_engine"] == 0.0
    assert summary["intent_accuracy"] == 0.5


def test_merged_transcript_counts_as_one_caller_turn() -> None:
    events = [
        {"type": "vad.speech_started", "turn_id": "a", "t": 1.1},
        {"type": "vad.speech_started", "turn_id": "b", "t": 2.5},
        {"type": "asr.final", "turn_id": "a", "text": "Нет", "t": 2.6},
        {
            "type": "asr.final",
            "turn_id": "b",
            "text": "Нет, я пожалуй ещё подумаю",
            "merged": ["a"],
            "t": 4.0,
        },
    ]
    log = CallLog("festival", 8000, "web", events=events)
    log.played = [
        Played("order_no_p", "pause", "festival", 8000, 1.0, 1.3, 3.5, t_second_start=2.4, t_end=3.8)
    ]
    [r], _ = analyze_call(log, TEXTS, DIALOG, LABELS)
    assert r.caller_turns == 1
    assert r.hyp == "Нет, я пожалуй ещё подумаю"
    assert r.replies == 0 and r.v2v_ms is None and r.intent_ok is False
