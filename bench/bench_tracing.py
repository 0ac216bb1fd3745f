"""What tracing costs per turn: the hooks of one turn with tracing off (the default) and on.

One turn runs the hooks the services run: ``span`` for vad.end, asr.final, router.route,
llm.first_sentence and tts.first_audio, ``turn_finished`` (gateway.playout + turn), and the log
processor on ten log lines of the turn. Off: nothing of OpenTelemetry may be imported (checked and
printed). On: the real SDK and OTLP/HTTP exporter, posting to a local sink that answers 200 (the
export runs on the SDK's thread; what the turn pays is the span creation and the queueing).

    .venv/bin/python bench/bench_tracing.py [--turns 20000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``voiceplatform`` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "shared"))

from voiceplatform import tracing

LOG_LINES_PER_TURN = 10


@dataclass
class _Turn:
    turn_id: str
    outcome: str = "played"
    speech_start_ts_ms: int = 0
    speech_end_ts_ms: int = 0
    asr_final_ts_ms: int = 0
    first_played_ts_ms: int = 0
    played_ms: int = 1200


def one_turn(call_id: str, turn_id: str) -> None:
    tracing.span("vad.end", call_id, turn_id, 400.0, provider="silero", reason="silence")
    tracing.span("asr.final", call_id, turn_id, 180.0, provider="whisper")
    tracing.span("router.route", call_id, turn_id, 3.0, robot="demo", how="keywords")
    tracing.span("llm.first_sentence", call_id, turn_id, 250.0, robot="demo", provider="openai")
    tracing.span("tts.first_audio", call_id, turn_id, 90.0, robot="demo", provider="rhvoice", sentence=0)
    now = time.time_ns() // 1_000_000
    tracing.turn_finished(
        call_id, _Turn(turn_id, speech_start_ts_ms=now - 3000, first_played_ts_ms=now), "demo"
    )
    for _ in range(LOG_LINES_PER_TURN):
        tracing.add_trace_id(None, "info", {"event": "x", "call_id": call_id, "turn_id": turn_id})


def measure(turns: int, interval_s: float) -> list[float]:
    """Microseconds of each turn's hooks; turns ``interval_s`` apart (a busy platform's turn rate:
    back to back, the exporter's queue overflows and its thread's encoding competes for the GIL)."""
    took = []
    for i in range(turns):
        started = time.perf_counter()
        one_turn(f"web-{i % 50}", f"web-{i % 50}-t{i}")
        took.append((time.perf_counter() - started) * 1e6)
        time.sleep(interval_s)
    return took


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def line(label: str, values: list[float]) -> str:
    return (
        f"{label:<5} p50 {pct(values, 50):8.1f} µs  p95 {pct(values, 95):8.1f} µs  "
        f"p99 {pct(values, 99):8.1f} µs  mean {statistics.fmean(values):8.1f} µs"
    )


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def otel_modules() -> list[str]:
    return sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter")))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=5000)
    parser.add_argument("--interval-ms", type=float, default=2.0, help="between turns (500 turns/s)")
    args = parser.parse_args()
    interval_s = args.interval_ms / 1000

    off = measure(args.turns, interval_s)
    print(
        f"per turn: 5 stage spans + gateway turn + {LOG_LINES_PER_TURN} log lines; "
        f"{args.turns} turns, {args.interval_ms} ms apart"
    )
    print(line("off", off))
    print(f"      OpenTelemetry SDK/exporter modules imported while off: {otel_modules() or 'none'}")

    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    host, port = sink.server_address[:2]
    tracing.configure("bench", endpoint=f"http://{host!s}:{port}")
    measure(min(500, args.turns), interval_s)  # warm-up (first-use imports inside the SDK)
    on = measure(args.turns, interval_s)
    tracing.shutdown()
    sink.shutdown()
    print(line("on", on))
    print(f"      on − off at p50: {pct(on, 50) - pct(off, 50):.1f} µs per turn")


if __name__ == "__main__":
    main()
