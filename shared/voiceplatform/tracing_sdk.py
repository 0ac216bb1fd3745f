"""The OpenTelemetry SDK side of ``voiceplatform.tracing``: imported only when tracing is on.

Kept apart so a process without an OTLP endpoint never imports OpenTelemetry (``tracing`` imports
this module inside ``configure``). Spans go through a ``BatchSpanProcessor`` (a background thread
exports them; the event loop only queues) to the OTLP/HTTP protobuf exporter, which reads its
headers, timeout and TLS settings from the standard ``OTEL_EXPORTER_OTLP_*`` variables itself.
"""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from voiceplatform.tracing import ATTRIBUTE_PREFIX, ROOT_SPAN, turn_ids

_NS_PER_MS = 1_000_000


class _TurnIds(IdGenerator):
    """Random ids, except for the root ``turn`` span: its trace and span ids are the turn's own
    (``tracing.turn_ids``), which every service's spans already name as trace and parent."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()
        self.forced: tuple[int, int] | None = None  # set only around starting a root span

    def generate_trace_id(self) -> int:
        return self.forced[0] if self.forced else self._random.generate_trace_id()

    def generate_span_id(self) -> int:
        return self.forced[1] if self.forced else self._random.generate_span_id()


class OtlpRecorder:
    def __init__(self, service: str, url: str, sample_ratio: float, instance_id: str) -> None:
        resource: dict[str, Any] = {"service.name": service, "service.namespace": "voice-platform"}
        if instance_id:
            resource["service.instance.id"] = instance_id
        self._ids = _TurnIds()
        self._provider = TracerProvider(
            resource=Resource.create(resource),
            sampler=TraceIdRatioBased(sample_ratio),  # same trace id, same decision in every service
            id_generator=self._ids,
            shutdown_on_exit=False,  # ``shutdown`` bounds the wait; an atexit hook would not
        )
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
        self._tracer = self._provider.get_tracer("voiceplatform")

    def record(
        self,
        name: str,
        call_id: str,
        turn_id: str,
        start_ms: float,
        attrs: dict[str, Any],
        end_ms: float | None = None,
    ) -> None:
        trace_id, root_id = turn_ids(call_id, turn_id)
        attributes = {f"{ATTRIBUTE_PREFIX}call_id": call_id, f"{ATTRIBUTE_PREFIX}turn_id": turn_id}
        attributes.update(
            {f"{ATTRIBUTE_PREFIX}{k}": v for k, v in attrs.items() if v is not None and v != ""}
        )
        start_ns = int(start_ms * _NS_PER_MS) if start_ms > 0 else None
        if name == ROOT_SPAN:
            self._ids.forced = (trace_id, root_id)
            try:
                span = self._tracer.start_span(name, Context(), attributes=attributes, start_time=start_ns)
            finally:
                self._ids.forced = None
        else:
            root = SpanContext(trace_id, root_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
            parent = trace.set_span_in_context(NonRecordingSpan(root))
            span = self._tracer.start_span(name, parent, attributes=attributes, start_time=start_ns)
        span.end(end_time=int(end_ms * _NS_PER_MS) if end_ms is not None else None)

    def shutdown(self, timeout_s: float) -> None:
        """Export what is queued; a collector that is down would hold us for its retries (seconds),
        so give up after ``timeout_s`` and lose those spans rather than delay the service's stop."""
        exporting = threading.Thread(target=self._provider.shutdown, name="otel-shutdown", daemon=True)
        exporting.start()
        exporting.join(timeout_s)
