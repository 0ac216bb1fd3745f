"""A call to an llm_script robot: the caller's question is answered by playing the right recording.

Every stage runs as its own process over real NATS (the `platform` fixture); the reply the caller
hears must be the track's own audio, and the records must hold the track's words and id.
"""

from __future__ import annotations

import asyncio

import asyncpg
import numpy as np
import pytest

from tests.audio_fixtures import festival_available, utterance
from tests.e2e.conftest import REPO, turns_summary
from voiceplatform.cli.call import place_call
from voiceplatform.config.tracks import load_tracks, track_pcm

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(not festival_available(), reason="festival with the Russian voice is not installed"),
]
RATE = 16000
ROBOT = "llm_script_russian"


def silence(s: float) -> np.ndarray:
    return np.zeros(int(RATE * s), np.int16)


async def stored_turns(postgres_dsn: str, call_id: str) -> tuple[list[asyncpg.Record], list[str]]:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        for _ in range(50):
            row = await conn.fetchrow("select status from calls where call_id=$1", call_id)
            if row and row["status"] == "ended":
                break
            await asyncio.sleep(0.1)
        turns = await conn.fetch("select * from call_turns where call_id=$1 order by created_at", call_id)
        tracks = await conn.fetch(
            "select data::jsonb->>'track' as track from call_events "
            "where call_id=$1 and type='turn.metrics' order by seq",
            call_id,
        )
    finally:
        await conn.close()
    return list(turns), [r["track"] for r in tracks]


async def test_a_question_is_answered_with_the_right_recording(platform, postgres_dsn) -> None:
    address = load_tracks(REPO / "robots" / ROBOT).manifest.by_id("address")
    assert address is not None
    caller = np.concatenate(
        [silence(5.0), utterance("Скажите, пожалуйста, где находится ваша клиника?"), silence(1.0)]
    )
    result = await place_call(platform.url, ROBOT, caller, tail_s=25)
    assert result.call_id, platform.logs_text()
    replies = [t for t in result.turns if not str(t["turn_id"]).endswith("-greeting")]
    assert len(replies) == 1, (turns_summary(result.turns), platform.logs_text())
    turn = replies[0]
    assert "клиник" in turn["user_text"].lower()
    assert turn["track"] == "address" and turn["bot_text"] == address.text, turn
    assert turn["outcome"] == "played" and turn["voice_to_voice_ms"] is not None

    # what the caller heard is the recording itself (a stretch from its middle, byte for byte)
    recording = track_pcm(REPO / "robots" / ROBOT / "tracks" / address.file, RATE)
    middle = len(recording) // 2 // 2 * 2
    assert recording[middle : middle + RATE] in bytes(result.robot_audio)

    turns, tracks = await stored_turns(postgres_dsn, result.call_id)
    by_id = {t["turn_id"]: t for t in turns}
    assert by_id[turn["turn_id"]]["bot_text"] == address.text
    assert "address" in tracks
