"""PCM helpers: 16-bit little-endian mono everywhere on the wire."""

from __future__ import annotations

import io
import math
import wave
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Int16Array = npt.NDArray[np.int16]


_PCM = np.dtype("<i2")
_PCM_IS_NATIVE = np.dtype(np.int16) == _PCM  # on little-endian machines: no conversion to make


def pcm_to_array(pcm: bytes) -> Int16Array:
    # runs on every caller frame: the dtype is built once, and the no-op conversion is skipped
    samples: Int16Array = np.frombuffer(pcm, _PCM)
    return samples if _PCM_IS_NATIVE else samples.astype(np.int16)


def array_to_pcm(samples: npt.NDArray[np.generic]) -> bytes:
    return np.asarray(samples, dtype="<i2").tobytes()


def rms(samples: Int16Array) -> float:
    if samples.size == 0:
        return 0.0
    # a dot product (the method: np.dot's dispatch is dearer): the energy VAD runs this on every
    # caller frame, and np.mean's dispatch costs more than the arithmetic on 160-320 samples
    x = samples.astype(np.float64)
    return math.sqrt(x.dot(x) / x.size)


def resample(samples: Int16Array, from_rate: int, to_rate: int) -> Int16Array:
    """Linear-interpolation resampler; a moving-average pre-filter limits aliasing on downsampling."""
    if from_rate == to_rate or samples.size == 0:
        return samples
    x: npt.NDArray[np.floating[Any]] = samples.astype(np.float32)
    if to_rate < from_rate:
        width = round(from_rate / to_rate)
        if 1 < width <= samples.size:  # "same" convolution of a shorter input would grow it
            x = np.convolve(x, np.ones(width, dtype=np.float32) / width, mode="same")
    n_out = round(samples.size * to_rate / from_rate)
    positions = np.arange(n_out, dtype=np.float64) * (from_rate / to_rate)
    out = np.interp(positions, np.arange(samples.size), x)
    result: Int16Array = np.clip(np.round(out), -32768, 32767).astype(np.int16)
    return result


def resample_pcm(pcm: bytes, from_rate: int, to_rate: int) -> bytes:
    if from_rate == to_rate:
        return pcm
    return array_to_pcm(resample(pcm_to_array(pcm), from_rate, to_rate))


def read_wav(path: Path | str | bytes) -> tuple[Int16Array, int]:
    """Read a 16-bit PCM WAV (mono, or the first channel of stereo); return samples and rate."""
    src: io.BytesIO | str = io.BytesIO(path) if isinstance(path, bytes) else str(path)
    with wave.open(src, "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"only 16-bit PCM WAV is supported, got {8 * wav.getsampwidth()}-bit")
        rate = wav.getframerate()
        channels = wav.getnchannels()
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    if channels > 1:
        data = data.reshape(-1, channels)[:, 0]
    return data.astype(np.int16), rate


def wav_bytes(samples: Int16Array, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(array_to_pcm(samples))
    return buf.getvalue()


def write_wav(path: Path | str, samples: Int16Array, rate: int) -> None:
    Path(path).write_bytes(wav_bytes(samples, rate))


def frames(samples: Int16Array, frame_samples: int) -> list[Int16Array]:
    """Split into full frames; the tail is zero-padded to a full frame."""
    if samples.size % frame_samples:
        samples = np.concatenate([samples, np.zeros(frame_samples - samples.size % frame_samples, np.int16)])
    return [samples[i : i + frame_samples] for i in range(0, samples.size, frame_samples)]
