"""One hysteresis segmenter for every VAD model, and the adapter from 20 ms frames to model windows.

Offsets come from frame sequence numbers (frame ``seq`` covers ``[seq*20, seq*20+20)`` ms), so lost
frames do not shift later offsets; a lost frame counts as non-speech.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from voiceplatform.providers.interfaces import VadModel
from voiceplatform.wire.messages import FRAME_MS


@dataclass(frozen=True, slots=True)
class SpeechStart:
    offset_ms: int


@dataclass(frozen=True, slots=True)
class SpeechEnd:
    start_ms: int
    offset_ms: int

    @property
    def speech_ms(self) -> int:
        return self.offset_ms - self.start_ms


SegmentEvent = SpeechStart | SpeechEnd


class Segmenter:
    """Speech starts after ``min_speech_frames`` consecutive frames scoring ``>= on``; it ends after
    ``silence_frames`` consecutive frames scoring ``< off``. Frames in between keep the current state.
    """

    def __init__(self, min_speech_frames: int, silence_frames: int, on: float, off: float) -> None:
        if off > on:
            raise ValueError("off threshold must not exceed on threshold")
        self.min_speech_frames = min_speech_frames
        self.silence_frames = silence_frames
        self.on = on
        self.off = off
        self.in_speech = False
        self._next_seq: int | None = None
        self._run_start = 0  # first seq of the current candidate run (silence state)
        self._run_len = 0
        self._start_seq = 0  # first seq of the confirmed utterance
        self._last_speech_seq = 0
        self._silence_len = 0

    def push(self, seq: int, probability: float) -> list[SegmentEvent]:
        events: list[SegmentEvent] = []
        if self._next_seq is not None and seq > self._next_seq:
            self._non_speech(seq - self._next_seq, events)
        self._next_seq = seq + 1
        if self.in_speech:
            if probability < self.off:
                self._non_speech(1, events)
            else:
                self._last_speech_seq = seq
                self._silence_len = 0
        elif probability >= self.on:
            if self._run_len == 0:
                self._run_start = seq
            self._run_len += 1
            if self._run_len >= self.min_speech_frames:
                self.in_speech = True
                self._start_seq = self._run_start
                self._last_speech_seq = seq
                self._silence_len = 0
                self._run_len = 0
                events.append(SpeechStart(self._run_start * FRAME_MS))
        else:
            self._run_len = 0
        return events

    def _non_speech(self, count: int, events: list[SegmentEvent]) -> None:
        if not self.in_speech:
            self._run_len = 0
            return
        self._silence_len += count
        if self._silence_len >= self.silence_frames:
            events.append(self._close())

    def _close(self) -> SpeechEnd:
        self.in_speech = False
        self._silence_len = 0
        self._run_len = 0
        return SpeechEnd(self._start_seq * FRAME_MS, (self._last_speech_seq + 1) * FRAME_MS)

    def flush(self) -> SpeechEnd | None:
        """End an open utterance at its last speech frame (call end, hand-over to another owner)."""
        return self._close() if self.in_speech else None


class FrameScorer:
    """Feeds 20 ms frames to a model with its own window size; each frame gets the probability of
    the newest window completed so far (a frame is shorter than any window, so at most one
    completes per frame).
    """

    def __init__(self, model: VadModel, sample_rate: int) -> None:
        self.model = model
        self.sample_rate = sample_rate
        self.window = model.window_samples(sample_rate)
        self._buffer = np.zeros(0, dtype=np.int16)
        self._last = 0.0

    def score(self, frame: npt.NDArray[np.int16]) -> float:
        if self._buffer.size == 0 and frame.size == self.window:
            self._last = self.model.speech_probability(frame, self.sample_rate)
            return self._last
        self._buffer = np.concatenate([self._buffer, frame])
        while self._buffer.size >= self.window:
            self._last = self.model.speech_probability(self._buffer[: self.window], self.sample_rate)
            self._buffer = self._buffer[self.window :]
        return self._last

    def discontinuity(self) -> None:
        """Frames were lost: the partial window and the model's context no longer line up."""
        self._buffer = np.zeros(0, dtype=np.int16)
        self._last = 0.0
        self.model.reset()
