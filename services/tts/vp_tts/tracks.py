"""Playing an ``llm_script`` robot's recording in place of synthesis (``LlmSentence.track``).

The recording goes out as the sentence's ``tts.audio`` chunks, resampled to the call's rate
(decoded once per file version and rate, ``voiceplatform.config.tracks.track_pcm``), so playout,
barge-in and the turn's figures are those of any synthesized sentence. A recording that cannot be
played (missing, unreadable, unknown id) is logged and counted, and the sentence's text, which is
what the recording says, is synthesized instead.
"""

from __future__ import annotations

import asyncio

import structlog

from voiceplatform.config import RobotConfig
from voiceplatform.config.tracks import TracksError, load_tracks, track_pcm
from voiceplatform.wire import LlmSentence

from .metrics import TRACKS_UNPLAYABLE
from .output import SentenceOutput

log = structlog.get_logger("vp_tts.tracks")

PROVIDER = "track"


def _recording(robot: RobotConfig, msg: LlmSentence) -> bytes:
    tracks = load_tracks(robot.path)
    track = tracks.manifest.by_id(msg.track)
    if track is None:
        raise ValueError(f"no track {msg.track!r} in the manifest")
    return track_pcm(tracks.path_of(track), msg.sample_rate)


async def play_track(robot: RobotConfig | None, msg: LlmSentence, out: SentenceOutput) -> bool:
    """Stream the sentence's recording; False when it cannot be played (nothing was sent)."""
    try:
        if robot is None:
            raise ValueError("the robot's configuration did not load")
        # the first play of a file decodes and resamples it: off the event loop
        pcm = await asyncio.to_thread(_recording, robot, msg)
    except (TracksError, ValueError, OSError) as exc:
        TRACKS_UNPLAYABLE.inc()
        log.error("tts.track_unplayable", track=msg.track, error=str(exc)[:300])
        return False
    out.provider = PROVIDER
    for start in range(0, len(pcm), out.chunk_bytes):
        await out.audio(pcm[start : start + out.chunk_bytes])
        await asyncio.sleep(0)  # a barge-in cancels the sentence between chunks
    return True
