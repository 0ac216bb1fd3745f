"""Chunk-by-chunk resampling that sounds the same as resampling the whole sentence at once.

``voiceplatform.audio.resample`` on each 100 ms chunk alone would zero-pad both chunk edges (its
anti-alias filter) and restart the interpolation grid, putting a click at every chunk boundary. This
class runs the very same filter and linear interpolation over a stream, carrying the few samples of
context across chunks, so the output equals ``resample(whole)`` and its total length is
``round(n_in * to / from)``.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from voiceplatform.audio import array_to_pcm, pcm_to_array, resample

Float32Array = npt.NDArray[np.float32]


class StreamResampler:
    def __init__(self, from_rate: int, to_rate: int) -> None:
        self.from_rate = from_rate
        self.to_rate = to_rate
        self._ratio = from_rate / to_rate
        width = round(from_rate / to_rate) if to_rate < from_rate else 1
        self._kernel = np.ones(width, dtype=np.float32) / width
        # np.convolve(mode="same") centres the window: it reaches this far back and ahead
        self._behind = width // 2
        self._ahead = (width - 1) // 2
        self._raw: Float32Array = np.zeros(0, dtype=np.float32)
        self._raw_start = 0  # global index of _raw[0]
        self._n_in = 0
        self._n_out = 0

    @property
    def passthrough(self) -> bool:
        return self.from_rate == self.to_rate

    def feed(self, pcm: bytes) -> bytes:
        """Resample the next chunk; returns what can be computed without later input."""
        if self.passthrough:
            return pcm
        samples = pcm_to_array(pcm).astype(np.float32)
        self._raw = np.concatenate([self._raw, samples])
        self._n_in += samples.size
        # output k interpolates between filtered[floor(k*ratio)] and the next sample, which needs
        # raw input up to that index plus the filter's look-ahead
        last_index = self._n_in - 1 - self._ahead - 1
        if last_index < 0:
            return b""
        k_end = math.floor(last_index / self._ratio) + 1
        return self._emit(k_end, self._n_in)

    def flush(self) -> bytes:
        """The rest of the stream (the input ended: zeros beyond it, as the whole-signal filter has)."""
        if self.passthrough:
            return b""
        total_out = round(self._n_in * self.to_rate / self.from_rate)
        self._raw = np.concatenate([self._raw, np.zeros(self._ahead + 1, dtype=np.float32)])
        return self._emit(total_out, self._n_in)

    def _emit(self, k_end: int, n_valid: int) -> bytes:
        if k_end <= self._n_out:
            return b""
        positions = np.arange(self._n_out, k_end, dtype=np.float64) * self._ratio
        # interpolation never reads past the last real input sample (np.interp clamps there too)
        positions = np.minimum(positions, n_valid - 1)
        lo = int(positions[0])
        hi = min(int(positions[-1]) + 2, n_valid)  # filtered indices [lo, hi) are needed
        filtered = self._filtered(lo, hi)
        out = np.interp(positions, np.arange(lo, hi, dtype=np.float64), filtered)
        self._n_out = k_end
        # keep only the raw samples later outputs can still reach
        next_lo = math.floor(self._n_out * self._ratio) - self._behind
        drop = max(0, min(next_lo - self._raw_start, self._raw.size))
        self._raw = self._raw[drop:]
        self._raw_start += drop
        return array_to_pcm(np.clip(np.round(out), -32768, 32767).astype(np.int16))

    def _filtered(self, lo: int, hi: int) -> Float32Array:
        """The moving-average-filtered signal at global indices [lo, hi)."""
        if self._kernel.size == 1:
            return self._raw[lo - self._raw_start : hi - self._raw_start]
        start = lo - self._behind
        stop = hi + self._ahead
        pad_front = max(0, self._raw_start - start)  # before the stream began: zeros
        window = self._raw[max(start - self._raw_start, 0) : stop - self._raw_start]
        if pad_front:
            window = np.concatenate([np.zeros(pad_front, dtype=np.float32), window])
        result: Float32Array = np.convolve(window, self._kernel, mode="valid").astype(np.float32)
        return result


def resample_whole(pcm: bytes, from_rate: int, to_rate: int) -> bytes:
    """Reference: the whole signal at once (what the stream must match)."""
    return array_to_pcm(resample(pcm_to_array(pcm), from_rate, to_rate))
