"""Voice-to-voice latency with the real offline engines: EnergyVAD, whisper-base, the script dialogue
engine and Festival, every stage its own process over NATS (the `vp up` launcher), callers played
through gateway-web's WebSocket in real time like a browser.

    .venv/bin/python bench/bench_voice_to_voice.py [--calls 4]

NATS is a private embedded server (so no other test's queue groups interfere); Postgres and Redis
come from POSTGRES_DSN/REDIS_URL, else loopback, else embedded. Prints p50/p95/p99 of each stage,
measured from the moment the VAD declared the end of speech (add the 0.5 s VAD hang-over for the
caller's experience), and the client's own measure from its last voiced frame.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from voiceplatform.cli.call import client_voice_to_voice, place_call  # noqa: E402
from voiceplatform.cli.demo import festival_say  # noqa: E402
from voiceplatform.cli.up import start_services, stop_services, wait_ready  # noqa: E402
from voiceplatform_devstack import devinfra  # noqa: E402

QUESTIONS = (
    "Здравствуйте! У меня есть собака, что вы можете предложить?",
    "Сколько стоит доставка?",
    "А что у вас есть для детей?",
    "Как у вас дела?",
    "Сколько это стоит?",
    "Спасибо, до свидания!",
)
RATE = 16000


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def row(label: str, values: list[float]) -> None:
    if values:
        p50, p95, p99 = (pct(values, p) for p in (50, 95, 99))
        print(f"{label:42} {p50:7.0f} {p95:7.0f} {p99:7.0f} {len(values):4}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=4, help="calls, two questions each")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vp-v2v-"))
    servers: list[object] = []
    nats = devinfra.EmbeddedNats.start(work / "nats")
    servers.append(nats)
    env = {**os.environ, "NATS_URL": nats.url, "ROBOTS_DIR": str(REPO / "robots"), "HF_HUB_OFFLINE": "1"}
    if "POSTGRES_DSN" not in env:
        if devinfra.port_open("127.0.0.1", 5432):
            env["POSTGRES_DSN"] = "postgresql://postgres@127.0.0.1:5432/postgres"
        else:
            pg = devinfra.EmbeddedPostgres.start(work / "pg")
            servers.append(pg)
            env["POSTGRES_DSN"] = pg.dsn
    if "REDIS_URL" not in env:
        if devinfra.port_open("127.0.0.1", 6379):
            env["REDIS_URL"] = "redis://127.0.0.1:6379/0"
        else:
            redis = devinfra.EmbeddedRedis.start(work / "redis")
            servers.append(redis)
            env["REDIS_URL"] = redis.url
    port = devinfra.free_port()
    procs = start_services(env, work / "logs", port, first_port=devinfra.free_port_block())
    try:
        if not wait_ready(f"http://127.0.0.1:{port}/health", 180, procs):
            print("platform not ready; logs in", work / "logs")
            return 1
        voices = [festival_say(q, RATE) for q in QUESTIONS]
        turns: list[dict[str, object]] = []
        client: list[float] = []
        greeting: list[float] = []
        for i in range(args.calls):
            a, b = voices[(2 * i) % len(voices)], voices[(2 * i + 1) % len(voices)]
            silence = np.zeros(RATE * 4, np.int16)
            caller = np.concatenate([silence, a, np.zeros(RATE * 10, np.int16), b, silence])
            result = asyncio.run(place_call(f"ws://127.0.0.1:{port}/ws", "pipeline_russian", caller, 25))
            turns += [t for t in result.turns if not t.get("interrupted")]
            client += [v for v in client_voice_to_voice(result, caller) if v is not None]
            if result.greeting_first_audio_s is not None:
                greeting.append(result.greeting_first_audio_s * 1000)
        print(f"\nvoice-to-voice with real offline engines: {len(turns)} turns in {args.calls} calls")
        print(f"{'stage (ms after VAD speech end)':42} {'p50':>7} {'p95':>7} {'p99':>7} {'n':>4}")
        for key in ("asr_ms", "llm_first_sentence_ms", "tts_first_audio_ms", "voice_to_voice_ms"):
            row(key, [float(t[key]) for t in turns if isinstance(t.get(key), int | float)])
        row("client: last voiced frame → robot audio", client)
        row("call answer → first greeting audio", greeting)
        print(
            f"mean of voice_to_voice: {statistics.mean(float(t['voice_to_voice_ms']) for t in turns):.0f} ms"
        )
        return 0
    finally:
        stop_services(procs)
        for server in reversed(servers):
            server.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
