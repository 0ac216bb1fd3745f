"""The simulated caller of the overhead benchmarks: numpy only, so pipecat's venv can import it too.

1 s of loud tone with a little noise (well above any energy VAD's threshold), then near-silence.
"""

from __future__ import annotations

import numpy as np

RATE = 16000
FRAME_S = 0.02
FRAME_SAMPLES = RATE // 50
SPEECH_FRAMES = 50  # 1 s of "speech"
GAP_FRAMES = 15  # silence after the reply before the next turn


def caller_frames(seed: int) -> tuple[list[bytes], bytes]:
    rng = np.random.default_rng(seed)
    t = np.arange(SPEECH_FRAMES * FRAME_SAMPLES) / RATE
    speech = np.sin(2 * np.pi * 220 * t) * 4000 + rng.normal(0, 300, t.size)
    pcm = speech.astype("<i2").tobytes()
    step = FRAME_SAMPLES * 2
    silence = rng.normal(0, 10, FRAME_SAMPLES).astype("<i2").tobytes()  # far below the threshold
    return [pcm[i : i + step] for i in range(0, len(pcm), step)], silence
