"""One hysteresis segmenter for every VAD model, and the adapter from 20 ms frames to model windows.

Offsets come from frame sequence numbers (frame ``seq`` covers ``[seq*20, seq*20+20)`` ms), so lost
frames do not shift later offsets; a lost frame counts as non-speech.

A turn goes speech -> (pause -> speech)* -> end. The pause comes after ``pause_frames`` of silence;
the end after a hang-over: ``silence_frames`` without an end-of-turn model, else the short or the
long hang-over of ``Hangover`` once the model's probability is known (``set_eot``). The segmenter is
pure: the caller runs the model and feeds its answer back.
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
class SpeechPause:
    start_ms: int
    offset_ms: int  # end of the speech so far
    pause_id: int  # names this pause for ``Segmenter.set_eot``
    seq: int  # the frame that made it a pause (the turn's audio up to here goes to the model)

    @property
    def speech_ms(self) -> int:
        return self.offset_ms - self.start_ms


@dataclass(frozen=True, slots=True)
class SpeechResume:
    offset_ms: int  # where speech came back


@dataclass(frozen=True, slots=True)
class SpeechEnd:
    start_ms: int
    offset_ms: int
    eot_probability: float = -1.0
    truncated: bool = False

    @property
    def speech_ms(self) -> int:
        return self.offset_ms - self.start_ms


SegmentEvent = SpeechStart | SpeechPause | SpeechResume | SpeechEnd


@dataclass(frozen=True, slots=True)
class Hangover:
    """Silence (in frames, counted from the last speech frame) that ends a turn when a model runs."""

    short_frames: int  # the model says complete
    long_frames: int  # the model says incomplete, or has not answered yet
    threshold: float  # probability of "complete" at or above which the short one applies


class Segmenter:
    """Speech starts after ``min_speech_frames`` consecutive frames scoring ``>= on``; it pauses after
    ``pause_frames`` and ends after the hang-over of consecutive frames scoring ``< off``. In a pause,
    ``resume_frames`` consecutive frames ``>= on`` resume the same turn. A turn reaching
    ``max_turn_frames`` is ended at once, truncated.
    """

    def __init__(
        self,
        min_speech_frames: int,
        silence_frames: int,
        on: float,
        off: float,
        *,
        pause_frames: int | None = None,
        hangover: Hangover | None = None,
        max_turn_frames: int | None = None,
        resume_frames: int = 2,
    ) -> None:
        if off > on:
            raise ValueError("off threshold must not exceed on threshold")
        self.min_speech_frames = min_speech_frames
        self.silence_frames = silence_frames
        self.on = on
        self.off = off
        self.hangover = hangover
        ends = [silence_frames] if hangover is None else [hangover.short_frames, hangover.long_frames]
        # a pause never comes later than the earliest possible end
        self.pause_frames = min([pause_frames, *ends]) if pause_frames is not None else None
        self.max_turn_frames = max_turn_frames
        self.resume_frames = resume_frames
        self.in_speech = False  # inside a turn (speaking or paused)
        self.paused = False
        self.pause_id = 0
        self._eot: float | None = None  # the model's answer for the current pause
        self._eot_failed = False
        self._next_seq: int | None = None
        self._run_start = 0  # first seq of the current candidate run (silence or pause state)
        self._run_len = 0
        self._start_seq = 0  # first seq of the confirmed utterance
        self._last_speech_seq = 0
        self._silence_len = 0

    @property
    def start_ms(self) -> int:
        return self._start_seq * FRAME_MS

    def push(self, seq: int, probability: float) -> list[SegmentEvent]:
        events: list[SegmentEvent] = []
        if self._next_seq is not None and seq > self._next_seq:
            self._run_len = 0  # lost frames break a candidate run (start or resume)
            self._non_speech(seq - self._next_seq, seq - 1, events)
        self._next_seq = seq + 1
        if self.in_speech and self.paused:
            self._push_paused(seq, probability, events)
        elif self.in_speech:
            if probability < self.off:
                self._non_speech(1, seq, events)
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
        if self.in_speech and self.max_turn_frames and seq - self._start_seq + 1 >= self.max_turn_frames:
            events.append(self._close(truncated=True))
        return events

    def _push_paused(self, seq: int, probability: float, events: list[SegmentEvent]) -> None:
        if probability >= self.on:
            if self._run_len == 0:
                self._run_start = seq
            self._run_len += 1
            if self._run_len >= self.resume_frames:
                self.paused = False
                self._eot = None
                self._eot_failed = False
                self._last_speech_seq = seq
                self._silence_len = 0
                self._run_len = 0
                events.append(SpeechResume(self._run_start * FRAME_MS))
                return
        else:
            self._run_len = 0
        # a candidate resume that has not made it yet is still silence
        self._non_speech(1, seq, events)

    def _non_speech(self, count: int, seq: int, events: list[SegmentEvent]) -> None:
        if not self.in_speech:
            self._run_len = 0
            return
        self._silence_len += count
        if not self.paused and self.pause_frames is not None and self._silence_len >= self.pause_frames:
            self.paused = True
            self.pause_id += 1
            self._eot = None
            self._eot_failed = False
            self._run_len = 0
            end_ms = (self._last_speech_seq + 1) * FRAME_MS
            events.append(SpeechPause(self._start_seq * FRAME_MS, end_ms, self.pause_id, seq))
        if self._silence_len >= self._end_frames():
            events.append(self._close())

    def _end_frames(self) -> int:
        if self.hangover is None or self._eot_failed:
            return self.silence_frames
        if self._eot is not None and self._eot >= self.hangover.threshold:
            return self.hangover.short_frames
        return self.hangover.long_frames

    def set_eot(self, pause_id: int, probability: float | None) -> list[SegmentEvent]:
        """The model's answer for pause ``pause_id`` (None: it failed, so the silence rule applies).

        Stale answers (the caller resumed, the turn ended) are ignored. Ends the turn at once when
        the silence so far already covers the hang-over the answer chose.
        """
        if not (self.in_speech and self.paused and pause_id == self.pause_id):
            return []
        if probability is None:
            self._eot_failed = True
        else:
            self._eot = probability
        if self._silence_len >= self._end_frames():
            return [self._close()]
        return []

    def _close(self, truncated: bool = False) -> SpeechEnd:
        eot = self._eot if self._eot is not None else -1.0
        self.in_speech = False
        self.paused = False
        self._eot = None
        self._eot_failed = False
        self._silence_len = 0
        self._run_len = 0
        return SpeechEnd(self._start_seq * FRAME_MS, (self._last_speech_seq + 1) * FRAME_MS, eot, truncated)

    def adopt(self, start_seq: int, seq: int) -> None:
        """Go on with a turn another instance started at ``start_seq`` (failover): in speech from
        there, with frame ``seq`` (speech, or the pause that follows) the next one pushed."""
        self.in_speech = True
        self.paused = False
        self._eot = None
        self._eot_failed = False
        self._start_seq = start_seq
        self._last_speech_seq = max(start_seq, seq - 1)
        self._silence_len = 0
        self._run_len = 0
        self._next_seq = seq

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
