"""End-of-turn model: Smart Turn v3.2 (BSD-2), an int8 ONNX file run with onnxruntime.

The file comes out of a wheel at setup (``scripts/fetch_smart_turn.sh``) into
``<prefix>/share/voiceplatform/models/``; ``VP_SMART_TURN_MODEL`` points elsewhere. Input: the last
8 s of the turn at 16 kHz (left-padded with zeros), normalised to zero mean and unit variance, as
Whisper log-mel features ``[1, 80, 800]`` (faster-whisper's extractor, which matches the model's
reference features to 1e-6); output: the probability that the turn is complete.

One session per process, one intra-op thread, and one worker thread shared by every call: a call
(~45 ms) never runs on the event loop that carries the other calls' frames.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from faster_whisper.feature_extractor import FeatureExtractor

from voiceplatform.audio import resample

MODEL_FILE = "smart-turn-v3.2-cpu.onnx"
MODEL_RATE = 16000
WINDOW_S = 8
_NORM_EPS = 1e-7

Float32Array = npt.NDArray[np.float32]

_session: ort.InferenceSession | None = None
_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


class EotModelMissing(RuntimeError):
    pass


class EotModel(Protocol):
    """Probability in [0, 1] that the speech so far is a complete turn (blocking; run off-loop)."""

    name: str

    def complete_probability(self, audio: npt.NDArray[np.int16], sample_rate: int) -> float: ...


def default_model_path() -> Path:
    env = os.environ.get("VP_SMART_TURN_MODEL")
    if env:
        return Path(env)
    return Path(sys.prefix) / "share" / "voiceplatform" / "models" / MODEL_FILE


def shared_session(path: Path | None = None) -> ort.InferenceSession:
    """The process-wide session (created on first use; later calls reuse it)."""
    global _session
    with _lock:
        if _session is None:
            model = path or default_model_path()
            if not model.is_file():
                raise EotModelMissing(f"no end-of-turn model at {model} (run scripts/fetch_smart_turn.sh)")
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            _session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        return _session


async def load_shared_session(path: Path | None = None) -> ort.InferenceSession:
    if _session is not None:
        return _session
    return await asyncio.to_thread(shared_session, path)


def executor() -> ThreadPoolExecutor:
    """The one worker thread for end-of-turn inference (2 threads would only fight for the cores)."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vad-eot")
        return _executor


def window(audio: npt.NDArray[np.int16], sample_rate: int) -> Float32Array:
    """The model's 8 s window: the turn's last 8 s at 16 kHz, zeros in front when shorter."""
    samples = resample(audio, sample_rate, MODEL_RATE)[-WINDOW_S * MODEL_RATE :]
    out = np.zeros(WINDOW_S * MODEL_RATE, dtype=np.float32)
    if samples.size:
        out[-samples.size :] = samples.astype(np.float32) / 32768.0
    return out


class SmartTurn:
    name = "smart_turn"

    def __init__(self, session: ort.InferenceSession | None = None) -> None:
        self._session = session or shared_session()
        self._features = FeatureExtractor(feature_size=80, chunk_length=WINDOW_S)

    def features(self, audio: npt.NDArray[np.int16], sample_rate: int) -> Float32Array:
        x = window(audio, sample_rate)
        x = (x - x.mean()) / np.sqrt(x.var() + _NORM_EPS)
        # padding=0: the window is already exactly 8 s; 801 STFT frames, the last dropped -> 800
        mel = self._features(x.astype(np.float32), padding=0)
        return np.asarray(mel, dtype=np.float32)[np.newaxis, :, :]

    def complete_probability(self, audio: npt.NDArray[np.int16], sample_rate: int) -> float:
        (out,) = self._session.run(None, {"input_features": self.features(audio, sample_rate)})
        # the graph ends in a sigmoid although its output is called "logits"
        return float(np.asarray(out).reshape(-1)[0])
