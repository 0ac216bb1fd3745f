"""Test-only end-of-turn models (injected in place of Smart Turn)."""

from __future__ import annotations

import threading
import time

import numpy as np
import numpy.typing as npt


class FakeEot:
    """Answers a fixed probability after ``delay_s`` (a blocking sleep, like a real inference), and
    records what it was given and on which thread."""

    name = "fake_eot"

    def __init__(self, probability: float, delay_s: float = 0.0, fail: bool = False) -> None:
        self.probability = probability
        self.delay_s = delay_s
        self.fail = fail
        self.calls: list[tuple[int, int]] = []  # (samples, sample_rate)
        self.threads: set[str] = set()
        self.running = threading.Event()
        self.done = threading.Event()

    def complete_probability(self, audio: npt.NDArray[np.int16], sample_rate: int) -> float:
        self.running.set()
        self.threads.add(threading.current_thread().name)
        self.calls.append((audio.size, sample_rate))
        time.sleep(self.delay_s)
        self.running.clear()
        self.done.set()
        if self.fail:
            raise RuntimeError("fake model failure")
        return self.probability
