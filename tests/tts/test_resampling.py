"""Chunked resampling equals whole-sentence resampling (no clicks at chunk edges)."""

from __future__ import annotations

import numpy as np
import pytest

from voiceplatform.resampling import StreamResampler, resample_whole


@pytest.mark.parametrize(
    ("from_rate", "to_rate"), [(16000, 8000), (22050, 16000), (22050, 8000), (8000, 16000), (16000, 16000)]
)
def test_stream_matches_whole_signal(from_rate: int, to_rate: int) -> None:
    rng = np.random.default_rng(from_rate + to_rate)
    for _ in range(10):
        n = int(rng.integers(1, 12000))
        pcm = (rng.standard_normal(n) * 8000).astype("<i2").tobytes()
        resampler = StreamResampler(from_rate, to_rate)
        out = b""
        pos = 0
        while pos < n:
            size = int(rng.integers(1, 2500))
            out += resampler.feed(pcm[2 * pos : 2 * (pos + size)])
            pos += size
        out += resampler.flush()
        reference = resample_whole(pcm, from_rate, to_rate)
        got = np.frombuffer(out, "<i2").astype(int)
        want = np.frombuffer(reference, "<i2").astype(int)
        assert got.size == want.size == round(n * to_rate / from_rate) or from_rate == to_rate
        assert np.abs(got - want).max(initial=0) <= 1


def test_chunk_edges_have_no_clicks() -> None:
    """A steady tone stays steady across 100 ms chunk boundaries after 16k → 8k."""
    t = np.arange(16000) / 16000
    pcm = (np.sin(2 * np.pi * 300 * t) * 10000).astype("<i2").tobytes()
    resampler = StreamResampler(16000, 8000)
    out = b"".join(resampler.feed(pcm[i : i + 3200]) for i in range(0, len(pcm), 3200)) + resampler.flush()
    naive = b"".join(resample_whole(pcm[i : i + 3200], 16000, 8000) for i in range(0, len(pcm), 3200))

    def roughness(audio: bytes) -> float:
        y = np.frombuffer(audio, "<i2").astype(float)[2:-2]
        return float(np.abs(np.diff(y, 2)).max())

    # a clean 300 Hz tone of amplitude 10000 at 8 kHz has |second difference| ≤ 10000·(2π·300/8000)² ≈ 555
    assert roughness(out) < 600
    assert roughness(naive) > 1000  # resampling each chunk alone clicks at the edges
