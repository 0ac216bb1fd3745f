"""One OpenTelemetry trace per turn, across the services; off (and free) unless an OTLP endpoint is set.

Every service records its stage of a turn with one call, ``span(name, call_id, turn_id, took_ms,
**attributes)``, when the stage's work is over. The gateway, which owns the turn, records the turn
itself with ``turn_finished`` when the turn is final (played, cut or without reply).

No context travels on the bus: the turn's trace id and its root span id are derived from
``(call_id, turn_id)``, which every message of a turn already carries. So every service starts its
span under the same trace, as a child of the gateway's ``turn`` span, without a new wire field or
NATS header, also on paths that do not pass messages along (a retried work item, the ASR's merged
turns, a deadline's fallback). The sampler decides on the trace id (``TraceIdRatioBased``), so
every service keeps or drops the same turns. ``trace_id`` is added to every log line that has
``call_id`` and ``turn_id`` (``add_trace_id``, a structlog processor).

Off by default: without ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``…_TRACES_ENDPOINT``) nothing of
OpenTelemetry is imported and each hook is one ``None`` check. Requested but not installed (the
``otel`` extra): one warning, and the service runs without traces.
"""

from __future__ import annotations

import hashlib
import importlib
import time
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import structlog

if TYPE_CHECKING:
    from voiceplatform.config.settings import ServiceSettings

log = structlog.get_logger("voiceplatform.tracing")

ROOT_SPAN = "turn"
ATTRIBUTE_PREFIX = "vp."

Attribute = str | int | float | bool


class _Recorder(Protocol):
    def record(
        self,
        name: str,
        call_id: str,
        turn_id: str,
        start_ms: float,
        attrs: dict[str, Any],
        end_ms: float | None = None,
    ) -> None:
        """A span from ``start_ms`` to ``end_ms`` (epoch ms; None: when it is recorded)."""
        ...

    def shutdown(self, timeout_s: float) -> None: ...


_recorder: _Recorder | None = None


def turn_ids(call_id: str, turn_id: str) -> tuple[int, int]:
    """The turn's trace id (128 bits) and the id of its root ``turn`` span (64 bits), never zero."""
    digest = hashlib.sha256(f"{call_id}\x00{turn_id}".encode()).digest()
    return int.from_bytes(digest[:16], "big") or 1, int.from_bytes(digest[16:24], "big") or 1


def trace_id_hex(call_id: str, turn_id: str) -> str:
    """The turn's trace id as W3C and the OTLP backends write it (32 hex digits)."""
    return f"{turn_ids(call_id, turn_id)[0]:032x}"


def enabled() -> bool:
    return _recorder is not None


def span(name: str, call_id: str, turn_id: str, took_ms: float, **attributes: Attribute) -> None:
    """Record one stage of turn ``turn_id`` that ends now and took ``took_ms``."""
    if _recorder is None or not turn_id:
        return
    now_ms = time.time_ns() / 1e6  # read once: the span lasts took_ms, not that plus its recording
    _recorder.record(name, call_id, turn_id, now_ms - max(0.0, took_ms), attributes, end_ms=now_ms)


class FinishedTurn(Protocol):
    """What ``turn_finished`` reads of the gateway's turn (``voiceplatform.gateway.turns.Turn``)."""

    turn_id: str
    outcome: str
    speech_start_ts_ms: int
    speech_end_ts_ms: int
    asr_final_ts_ms: int
    first_played_ts_ms: int
    played_ms: int


def turn_finished(call_id: str, turn: FinishedTurn, robot: str) -> None:
    """The gateway's spans of a final turn: ``gateway.playout`` (first frame played to the reply's
    end or its cut) and the root ``turn`` (the caller's speech start, or the earliest time known, to now)."""
    if _recorder is None:
        return
    outcome = turn.outcome
    if turn.first_played_ts_ms:
        _recorder.record(
            "gateway.playout",
            call_id,
            turn.turn_id,
            turn.first_played_ts_ms,
            {"robot": robot, "outcome": outcome, "played_ms": turn.played_ms},
        )
    known = [turn.speech_start_ts_ms, turn.speech_end_ts_ms, turn.asr_final_ts_ms, turn.first_played_ts_ms]
    start = min((t for t in known if t), default=0)
    _recorder.record(ROOT_SPAN, call_id, turn.turn_id, start, {"robot": robot, "outcome": outcome})


def add_trace_id(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: ``trace_id`` next to ``call_id`` on a turn's lines while tracing is on."""
    if _recorder is not None and event.get("turn_id") and event.get("call_id"):
        event.setdefault("trace_id", trace_id_hex(str(event["call_id"]), str(event["turn_id"])))
    return event


def configure(
    service: str,
    *,
    endpoint: str = "",
    traces_endpoint: str = "",
    sample_ratio: float = 1.0,
    instance_id: str = "",
) -> bool:
    """Start exporting this process's spans over OTLP/HTTP when an endpoint is given; True when on.

    ``endpoint`` is the collector's base URL (``/v1/traces`` is appended, as the OTLP spec says for
    ``OTEL_EXPORTER_OTLP_ENDPOINT``); ``traces_endpoint`` is used as it is. A second call replaces
    the first (its spans are flushed)."""
    global _recorder
    url = traces_endpoint or (f"{endpoint.rstrip('/')}/v1/traces" if endpoint else "")
    if not url:
        return False
    try:
        tracing_sdk = importlib.import_module("voiceplatform.tracing_sdk")
    except ImportError as exc:
        log.warning(
            "tracing.unavailable",
            reason="OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed "
            "(pip install 'voice-platform[otel]'); running without traces",
            error=str(exc)[:200],
        )
        return False
    shutdown()
    _recorder = tracing_sdk.OtlpRecorder(service, url, sample_ratio, instance_id)
    where = urlsplit(url)  # logged without a user:password@ it might carry
    log.info("tracing.on", collector=f"{where.scheme}://{where.netloc.rpartition('@')[2]}{where.path}")
    return True


def configure_from(settings: ServiceSettings, service: str) -> bool:
    """``configure`` from a service's settings (``ServiceSettings``)."""
    return configure(
        service,
        endpoint=settings.otel_exporter_otlp_endpoint,
        traces_endpoint=settings.otel_exporter_otlp_traces_endpoint,
        sample_ratio=settings.trace_sample_ratio,
        instance_id=settings.instance_id,
    )


def shutdown(timeout_s: float = 2.0) -> None:
    """Export what is buffered (for at most ``timeout_s``) and stop tracing (at process end)."""
    global _recorder
    recorder, _recorder = _recorder, None
    if recorder is not None:
        recorder.shutdown(timeout_s)
