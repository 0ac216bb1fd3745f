"""Draft recordings for an llm_script robot: synthesize each track's text with a local voice.

    .venv/bin/python scripts/synthesize_tracks.py robots/<name> [--voice Irina] [--rate 16000] [--only id ...]

Writes ``tracks/<file>`` (16-bit PCM mono WAV at ``--rate``) for every track of
``tracks/manifest.json`` with RHVoice (the clearest local Russian voice, docs/voices.md), plus
``greeting.wav`` from ``greeting_text`` and ``fallback.wav`` from ``fallback_text`` when they are
set. Studio recordings replace these files one by one (robots/llm_script_russian/README.md).
Needs the services on PYTHONPATH (``source scripts/...`` or ``vp``'s environment).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import numpy as np

from voiceplatform.audio import pcm_to_array, resample, write_wav
from voiceplatform.config import load_robot
from voiceplatform.config.tracks import check_tracks, load_tracks
from vp_tts.providers.rhvoice import SAMPLE_RATE, RhvoiceTts
from vp_tts.settings import TtsSettings

# a short silence around each recording: the caller's line does not start or end mid-word
PAD_S = 0.1


async def synthesize(tts: RhvoiceTts, text: str, voice: str, rate: int) -> np.ndarray:
    pcm = b"".join([chunk async for chunk in tts.stream_synthesize(text, voice)])
    samples = resample(pcm_to_array(pcm), SAMPLE_RATE, rate)
    pad = np.zeros(int(PAD_S * rate), np.int16)
    return np.concatenate([pad, samples, pad])


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("robot", type=Path)
    parser.add_argument("--voice", default="Irina")
    parser.add_argument("--rate", type=int, default=16000)
    parser.add_argument("--only", nargs="*", default=[], help="track ids (default: every track)")
    args = parser.parse_args()
    robot = load_robot(args.robot)
    tracks = load_tracks(args.robot)
    tts = RhvoiceTts(TtsSettings())
    await tts.start()
    lines = [
        (tracks.path_of(t), t.text) for t in tracks.manifest.tracks if not args.only or t.id in args.only
    ]
    if not args.only:
        for name, text in (
            ("greeting.wav", robot.settings.greeting_text),
            ("fallback.wav", robot.settings.fallback_text),
        ):
            if text:
                lines.append((args.robot / name, text))
                # the words a recording says, so `vp check` can tell it still matches the config
                (args.robot / f"{name}.txt").write_text(text + "\n", encoding="utf-8")
    for path, text in lines:
        samples = await synthesize(tts, text, args.voice, args.rate)
        write_wav(path, samples, args.rate)
        print(f"{path}: {samples.size / args.rate:.1f} s")
    await tts.aclose()
    for problem in check_tracks(args.robot):
        print("problem:", problem)


if __name__ == "__main__":
    asyncio.run(main())
