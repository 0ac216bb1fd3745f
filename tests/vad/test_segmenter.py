"""EnergyVAD and the shared hysteresis segmenter on synthetic PCM (tone bursts and silence)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.vad.helpers import Pcm, silence, tone, white_noise
from voiceplatform.audio import frames
from voiceplatform.config import VadConfig
from vp_vad.providers import hysteresis
from vp_vad.providers.energy import EnergyVad
from vp_vad.segmenter import FrameScorer, Segmenter, SegmentEvent, SpeechEnd, SpeechStart

FRAME_MS = 20


def run_energy(samples: Pcm, rate: int, cfg: VadConfig | None = None) -> list[tuple[SegmentEvent, int]]:
    """Every event with the seq of the frame that produced it."""
    cfg = cfg or VadConfig()
    scorer = FrameScorer(EnergyVad(cfg.energy_threshold), rate)
    on, off = hysteresis(cfg)
    seg = Segmenter(cfg.min_speech_frames, cfg.silence_frames, on, off)
    out: list[tuple[SegmentEvent, int]] = []
    for seq, frame in enumerate(frames(samples, rate // 50)):
        out.extend((ev, seq) for ev in seg.push(seq, scorer.score(frame)))
    return out


@pytest.mark.parametrize("rate", [8000, 16000])
def test_energy_finds_two_tone_bursts(rate: int) -> None:
    audio = np.concatenate(
        [silence(rate, 500), tone(rate, 1000), silence(rate, 1000), tone(rate, 400), silence(rate, 1000)]
    )
    events = run_energy(audio, rate)
    kinds = [type(ev) for ev, _ in events]
    assert kinds == [SpeechStart, SpeechEnd, SpeechStart, SpeechEnd]
    (s1, s1_at), (e1, e1_at), (s2, _), (e2, _) = events
    assert abs(s1.offset_ms - 500) <= FRAME_MS
    assert abs(e1.offset_ms - 1500) <= FRAME_MS
    assert abs(s2.offset_ms - 2500) <= FRAME_MS
    assert abs(e2.offset_ms - 2900) <= FRAME_MS
    assert isinstance(e1, SpeechEnd) and abs(e1.speech_ms - 1000) <= 2 * FRAME_MS
    # confirmation needs min_speech_frames (5) frames; the end needs silence_frames (25) frames
    assert s1_at == 500 // FRAME_MS + 4
    assert e1_at == 1500 // FRAME_MS + 24


@pytest.mark.parametrize("rate", [8000, 16000])
def test_energy_burst_not_on_frame_boundary(rate: int) -> None:
    audio = np.concatenate([silence(rate, 310), tone(rate, 730), silence(rate, 800)])
    events = run_energy(audio, rate)
    assert [type(ev) for ev, _ in events] == [SpeechStart, SpeechEnd]
    start, end = events[0][0], events[1][0]
    assert 300 <= start.offset_ms <= 320
    assert 1040 <= end.offset_ms <= 1060


def test_energy_threshold_is_rms() -> None:
    vad = EnergyVad(energy_threshold=200)
    rate = 16000
    # a sine's RMS is amplitude / sqrt(2): 270 → 191 (below), 300 → 212 (above)
    assert vad.speech_probability(tone(rate, 20, amplitude=270), rate) == 0.0
    assert vad.speech_probability(tone(rate, 20, amplitude=300), rate) == 1.0
    assert vad.window_samples(8000) == 160 and vad.window_samples(16000) == 320


def test_short_blips_and_quiet_noise_are_not_speech() -> None:
    rate = 8000
    parts = [silence(rate, 300)]
    for _ in range(5):  # 80 ms blips: 4 frames < min_speech_frames
        parts += [tone(rate, 80), silence(rate, 200)]
    parts.append(white_noise(rate, 1000, std=100))  # RMS ~100 < 200
    assert run_energy(np.concatenate(parts), rate) == []


def test_pause_shorter_than_silence_frames_keeps_one_utterance() -> None:
    rate = 16000
    audio = np.concatenate(
        [silence(rate, 200), tone(rate, 400), silence(rate, 400), tone(rate, 400), silence(rate, 600)]
    )
    events = run_energy(audio, rate)
    assert [type(ev) for ev, _ in events] == [SpeechStart, SpeechEnd]
    assert events[0][0].offset_ms == 200
    assert events[1][0].offset_ms == 1400


def test_config_changes_timing() -> None:
    rate = 16000
    cfg = VadConfig(min_speech_frames=2, silence_frames=5, energy_threshold=1000)
    audio = np.concatenate(
        [
            silence(rate, 100),
            tone(rate, 60, amplitude=2000),
            silence(rate, 200),
            tone(rate, 200, amplitude=1000),
            silence(rate, 200),
        ]
    )
    events = run_energy(audio, rate, cfg)
    # 60 ms at RMS ~1414 is confirmed with 2 frames; the 200 ms tone at RMS ~707 stays below 1000
    assert [(type(ev), ev.offset_ms) for ev, _ in events] == [(SpeechStart, 100), (SpeechEnd, 160)]
    assert events[1][1] == 160 // FRAME_MS + 4


def test_hysteresis_between_off_and_on_keeps_state() -> None:
    seg = Segmenter(min_speech_frames=2, silence_frames=3, on=0.5, off=0.35)
    probs = [0.4, 0.4, 0.6, 0.6, 0.4, 0.4, 0.4, 0.4, 0.2, 0.2, 0.2]
    events = [(seq, ev) for seq, p in enumerate(probs) for ev in seg.push(seq, p)]
    # 0.4 cannot start speech, but once in speech it holds it; three frames under 0.35 end it
    assert events == [(3, SpeechStart(40)), (10, SpeechEnd(40, 160))]


def test_lost_frames_keep_offsets_by_seq_and_count_as_non_speech() -> None:
    seg = Segmenter(min_speech_frames=3, silence_frames=10, on=0.5, off=0.5)
    events: list[SegmentEvent] = []
    for seq in range(100, 110):
        events += seg.push(seq, 1.0)
    assert events == [SpeechStart(100 * FRAME_MS)]
    # a 5-frame gap (< silence_frames) does not end the utterance ...
    for seq in range(115, 120):
        events += seg.push(seq, 1.0)
    assert len(events) == 1
    # ... a 12-frame gap does: it ends at the last speech frame heard, and a new one starts later
    for seq in range(132, 140):
        events += seg.push(seq, 1.0)
    assert events[1:] == [SpeechEnd(100 * FRAME_MS, 120 * FRAME_MS), SpeechStart(132 * FRAME_MS)]


def test_gap_breaks_a_candidate_run() -> None:
    seg = Segmenter(min_speech_frames=3, silence_frames=10, on=0.5, off=0.5)
    assert seg.push(0, 1.0) == [] and seg.push(1, 1.0) == []
    assert seg.push(3, 1.0) == []  # seq 2 lost: the run restarts at 3
    assert seg.push(4, 1.0) == []
    assert seg.push(5, 1.0) == [SpeechStart(60)]


def test_flush_ends_open_utterance() -> None:
    seg = Segmenter(min_speech_frames=1, silence_frames=10, on=0.5, off=0.5)
    assert seg.flush() is None
    seg.push(7, 1.0)
    seg.push(8, 1.0)
    seg.push(9, 0.0)
    assert seg.flush() == SpeechEnd(140, 180)
    assert seg.flush() is None


def test_segmenter_rejects_inverted_thresholds() -> None:
    with pytest.raises(ValueError):
        Segmenter(1, 1, on=0.3, off=0.5)


def test_silero_hysteresis_from_config() -> None:
    assert hysteresis(VadConfig(provider="silero", threshold=0.6)) == pytest.approx((0.6, 0.45))
    assert hysteresis(VadConfig(provider="silero", threshold=0.1)) == pytest.approx((0.1, 0.01))
    assert hysteresis(VadConfig(provider="energy")) == (0.5, 0.5)


class _WindowMean:
    """A 32 ms-window model whose score is the window's mean sample / 1000 (to see which window)."""

    name = "window-mean"

    def __init__(self) -> None:
        self.windows: list[int] = []
        self.resets = 0

    def window_samples(self, sample_rate: int) -> int:
        return sample_rate * 32 // 1000

    def speech_probability(self, window: Pcm, sample_rate: int) -> float:
        self.windows.append(window.size)
        return float(window.mean()) / 1000

    def reset(self) -> None:
        self.resets += 1


def test_frame_scorer_buffers_frames_into_model_windows() -> None:
    model = _WindowMean()
    scorer = FrameScorer(model, 16000)
    # frame k holds the constant value k; 5 frames of 320 samples make 3 windows of 512 (+64 left)
    scores = [scorer.score(np.full(320, k, dtype=np.int16)) for k in range(1, 6)]
    assert model.windows == [512, 512, 512]
    assert scores[0] == 0.0  # no full window yet
    assert scores[1] == pytest.approx((320 * 1 + 192 * 2) / 512 / 1000)  # window 0 = frames 1..2
    assert scores[2] == scores[1]  # no new window: keeps the newest score
    assert scores[3] == pytest.approx((128 * 2 + 320 * 3 + 64 * 4) / 512 / 1000)
    scorer.discontinuity()
    assert model.resets == 1
    assert scorer.score(np.full(320, 9, dtype=np.int16)) == 0.0  # partial window was dropped
