"""Silero VAD: the ONNX file shipped in the ``silero-vad`` wheel, run with onnxruntime (no torch).

The package itself is never imported (its ``__init__`` imports torch); only its data file is used.
One ``InferenceSession`` per process is shared by every call; each call keeps its own recurrent
state and context, so calls never disturb each other. Inference runs in-line: ~0.1 ms per window.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from pathlib import Path
from typing import Self

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from voiceplatform.providers.base import ProviderBase, ProviderContext

# samples of the previous window the model expects in front of each window
_CONTEXT = {16000: 64, 8000: 32}
_WINDOW = {16000: 512, 8000: 256}
_STATE_SHAPE = (2, 1, 128)

_session: ort.InferenceSession | None = None
_session_path: Path | None = None
_lock = threading.Lock()


class SileroModelMissing(RuntimeError):
    pass


def default_model_path() -> Path:
    """``silero_vad/data/silero_vad.onnx`` of the installed wheel, found without importing it."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or spec.origin is None:
        raise SileroModelMissing("the silero-vad package is not installed (pip install --no-deps silero-vad)")
    path = Path(spec.origin).parent / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise SileroModelMissing(f"no silero_vad.onnx at {path}")
    return path


def shared_session(path: Path | None = None) -> ort.InferenceSession:
    """The process-wide session (created on first use; later calls reuse it)."""
    global _session, _session_path
    with _lock:
        if _session is None:
            model = path or default_model_path()
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            _session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
            _session_path = model
        return _session


async def load_shared_session(path: Path | None = None) -> ort.InferenceSession:
    """Load off the event loop (~0.2 s the first time)."""
    if _session is not None:
        return _session
    return await asyncio.to_thread(shared_session, path)


class SileroVad(ProviderBase):
    """Per-call streaming scorer over the shared session."""

    name = "silero"
    scope = "call"

    @classmethod
    def from_context(cls, ctx: ProviderContext) -> Self:
        return cls()  # over the process-wide session (``build_model`` loads it off the loop)

    def __init__(self, session: ort.InferenceSession | None = None) -> None:
        self._session = session or shared_session()
        self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context: npt.NDArray[np.float32] | None = None

    def window_samples(self, sample_rate: int) -> int:
        try:
            return _WINDOW[sample_rate]
        except KeyError:
            raise ValueError(f"silero supports 8000 and 16000 Hz, not {sample_rate}") from None

    def speech_probability(self, window: npt.NDArray[np.int16], sample_rate: int) -> float:
        n_ctx = _CONTEXT[sample_rate]
        if window.size != _WINDOW[sample_rate]:
            raise ValueError(f"silero window must be {_WINDOW[sample_rate]} samples, got {window.size}")
        audio = window.astype(np.float32) / 32768.0
        if self._context is None or self._context.size != n_ctx:
            self._context = np.zeros(n_ctx, dtype=np.float32)
        model_input = np.concatenate([self._context, audio])[np.newaxis, :]
        out, state = self._session.run(
            ["output", "stateN"],
            {"input": model_input, "state": self._state, "sr": np.array(sample_rate, dtype=np.int64)},
        )
        self._state = state
        self._context = audio[-n_ctx:]
        return float(out[0, 0])

    def reset(self) -> None:
        self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context = None
