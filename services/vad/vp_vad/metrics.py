"""VAD-specific metrics (the shared ones live in ``voiceplatform.metrics``)."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

SERVICE = "vad"


class FrameTimes:
    """One provider's share of ``vp_vad_frame_processing_ms``."""

    __slots__ = ("counts", "sum")

    def __init__(self, bounds: int) -> None:
        self.counts = [0] * bounds  # per bucket, not cumulative
        self.sum = 0.0

    def observe(self, ms: float) -> None:
        self.counts[bisect_left(FrameProcessingMs.BOUNDS, ms)] += 1
        self.sum += ms


class FrameProcessingMs(Collector):
    """A histogram of every caller frame's scoring time, counted in plain Python and turned into
    samples when scraped: prometheus_client's observe() (checks, then a lock for the sum and one
    for the bucket) cost as much as scoring a frame with the energy VAD. No lock: /metrics is served
    on the event loop that counts. The exposition is Histogram's, less its ``_created`` sample."""

    NAME = "vp_vad_frame_processing_ms"
    HELP = "Time to score and segment one 20 ms frame, in milliseconds"
    BOUNDS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, math.inf)
    LE = tuple(floatToGoString(b) for b in BOUNDS)  # type: ignore[no-untyped-call]  # as Histogram writes them

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self._providers: dict[str, FrameTimes] = {}
        registry.register(self)

    def labels(self, provider: str) -> FrameTimes:
        times = self._providers.get(provider)
        if times is None:
            times = self._providers[provider] = FrameTimes(len(self.BOUNDS))
        return times

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.NAME, self.HELP, labels=["provider"])

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.NAME, self.HELP, labels=["provider"])
        for provider, times in self._providers.items():
            total, buckets = 0, []
            for le, count in zip(self.LE, times.counts, strict=True):
                total += count
                buckets.append((le, float(total)))
            family.add_metric([provider], buckets, times.sum)
        yield family


FRAME_PROCESSING_MS = FrameProcessingMs()

EOT_INFERENCE_MS = Histogram(
    "vp_vad_eot_inference_ms",
    "End-of-turn model: features + inference for one pause, in the worker thread, in milliseconds",
    buckets=(10, 20, 30, 45, 60, 80, 120, 200, 400, 1000),
)

EOT_WAIT_MS = Histogram(
    "vp_vad_eot_wait_ms",
    "From a pause to the end-of-turn model's answer (queueing included), in milliseconds",
    buckets=(20, 40, 60, 80, 120, 200, 400, 800, 1600),
)

EOT_RESULTS = Counter(
    "vp_vad_eot_results_total",
    "End-of-turn model answers: complete, incomplete, stale (speech resumed first), error",
    ["result"],
)

TURNS_ENDED = Counter(
    "vp_vad_turns_ended_total",
    "Turns ended, by what ended them: silence (no model), model_short, model_long, truncated, flush",
    ["reason"],
)
