"""Conversation benchmark: scripted Russian callers (several synthetic voices, light noise, pauses
inside sentences, backchannels over the robot) talking to a robot through the whole platform.

The platform runs as ``vp up`` runs it (every service its own process, ``voiceplatform.cli.up``) over
a private embedded NATS; Postgres/Redis come from POSTGRES_DSN/REDIS_URL, else loopback, else
embedded. Calls go through gateway-web's WebSocket like a browser, or with ``--phone`` through
gateway-fs with the FreeSWITCH peer at 8 kHz. The corpus is built by ``bench/conversation_corpus.py``
(cached under ~/.cache/voice-platform/bench-corpus). Calls = ``--calls`` x ``--rates``; call i uses
script i and voice i (round robin). Metric definitions: ``bench/conversation_metrics.py``.

    .venv/bin/python bench/bench_conversation.py [--calls 8] [--rates 16000 8000] [--json out.json]
    .venv/bin/python bench/bench_conversation.py --quick --rates 16000     # smoke: 1 call, ~2 min
    .venv/bin/python bench/bench_conversation.py --phone --calls 8         # gateway-fs, 8 kHz
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.conversation_call import CallLog, PhoneTransport, WebTransport, run_script
from bench.conversation_corpus import (
    BY_ID,
    LABELS,
    QUICK_SCRIPT,
    QUICK_VOICES,
    SCRIPTS,
    VOICES,
    Corpus,
    build_corpus,
)
from bench.conversation_metrics import UttResult, analyze_call, summarize
from voiceplatform.cli.up import Infra, start_services, stop_services, wait_ready
from voiceplatform_devstack import devinfra

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 180
ESL_PASSWORD = "bench-conversation-esl"
STREAM_SECRET = "bench-conversation-stream-key"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=8, help="calls per sample rate (8: every voice once)")
    p.add_argument("--voices", nargs="+", default=list(VOICES), help=f"from {', '.join(VOICES)}")
    p.add_argument("--rates", nargs="+", type=int, default=[16000, 8000], choices=[16000, 8000])
    p.add_argument("--quick", action="store_true", help="smoke subset: 1 call, 1 voice, 3 utterances")
    p.add_argument("--robot", type=Path, default=REPO / "robots" / "pipeline_russian")
    p.add_argument("--phone", action="store_true", help="through gateway-fs (8 kHz only)")
    p.add_argument("--snr", type=float, default=30.0, help="background noise, dB below speech")
    p.add_argument("--no-warmup", action="store_true", help="skip the uncounted one-utterance first call")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    args = p.parse_args(argv)
    if args.quick:
        args.calls = 1
        if args.voices == list(VOICES):
            args.voices = list(QUICK_VOICES)
    if args.phone and args.rates != [8000]:
        print("note: --phone runs at 8 kHz only (the phone path)")
        args.rates = [8000]
    return args


def plan(args: argparse.Namespace, voices: list[str]) -> list[tuple[str, tuple[tuple[str, str], ...], int]]:
    calls = []
    for rate in args.rates:
        for i in range(args.calls):
            script = QUICK_SCRIPT if args.quick else SCRIPTS[i % len(SCRIPTS)]
            calls.append((voices[i % len(voices)], script, rate))
    return calls


def call_items(corpus: Corpus, voice: str, script: tuple[tuple[str, str], ...], rate: int) -> list[Any]:
    items = []
    for uid, bc in script:
        clip = corpus.clip(uid, voice, rate)
        clip_kind = SimpleNamespace(**asdict(clip), kind=BY_ID[uid].kind)
        bc_item = None
        if bc:
            b = corpus.clip(bc, voice, rate)
            bc_item = (bc, corpus.audio(b.noisy), SimpleNamespace(**asdict(b), kind="backchannel"))
        items.append((uid, corpus.audio(clip.noisy), clip_kind, bc_item))
    return items


def free_block(count: int) -> int:
    """First of ``count`` consecutive free loopback ports (the services take ports one after another)."""
    import random
    import socket

    for _ in range(200):
        first = random.randint(20000, 60000 - count)
        try:
            socks = []
            for port in range(first, first + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no block of free ports")


def platform_env(work: Path, phone: bool) -> tuple[Infra, dict[str, str]]:
    os.environ.pop("NATS_URL", None)  # a private NATS: other runs' services must not take our calls
    if "POSTGRES_DSN" not in os.environ and devinfra.port_open("127.0.0.1", 5432):
        os.environ["POSTGRES_DSN"] = "postgresql://postgres@127.0.0.1:5432/postgres"
    if "REDIS_URL" not in os.environ and devinfra.port_open("127.0.0.1", 6379):
        os.environ["REDIS_URL"] = "redis://127.0.0.1:6379/0"
    infra = Infra(work)
    infra.start()
    env = {
        **os.environ,
        **infra.env,
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "VP_LOG_FORMAT": "json",
    }
    env.pop("VP_FS_ESL_PASSWORD", None)
    if phone:
        env.update(
            VP_FS_ESL_PASSWORD=ESL_PASSWORD,
            VP_FS_STREAM_SECRET=STREAM_SECRET,
            VP_FS_ESL_PORT=str(free_block(1)),
            VP_GATEWAY_FS_PORT=str(free_block(1)),
            VP_GATEWAY_FS_HTTP_PORT=str(free_block(1)),
        )
    return infra, env


async def run_calls(
    args: argparse.Namespace, corpus: Corpus, calls: list[Any], env: dict[str, str], port: int
) -> list[CallLog]:
    logs: list[CallLog] = []
    robot = args.robot.name
    peer = None
    if args.phone:
        from voiceplatform_devstack import FreeSwitchPeer

        peer = FreeSwitchPeer(esl_password=ESL_PASSWORD, esl_port=int(env["VP_FS_ESL_PORT"]))
        await peer.start()
        deadline = time.monotonic() + 60
        while not any(c.line.startswith("event ") for c in peer.commands):
            if time.monotonic() > deadline:
                raise RuntimeError("gateway-fs did not log in to the peer's Event Socket")
            await asyncio.sleep(0.1)
    try:
        if not args.no_warmup:  # the first inference of each model is slow: keep it out of the figures
            voice, script, rate = calls[0]
            calls = [(voice, script[:1], rate), *calls]
        total = len(calls) - (0 if args.no_warmup else 1)
        for n, (voice, script, rate) in enumerate(calls, 1 if args.no_warmup else 0):
            items = call_items(corpus, voice, script, rate)
            tx: WebTransport | PhoneTransport
            if peer is not None:
                base = f"ws://127.0.0.1:{env['VP_GATEWAY_FS_PORT']}/call"
                tx = PhoneTransport(peer, base, robot, voice, secret=STREAM_SECRET)
            else:
                tx = WebTransport(f"ws://127.0.0.1:{port}/ws", robot, rate, voice)
            started = time.monotonic()
            async with tx:
                await run_script(tx, items)
            if n > 0:
                logs.append(tx.log)
            name = f"call {n}/{total}"
            print(
                f"{'warm-up call (not counted)' if n == 0 else name}: {voice} {rate // 1000}k, "
                f"{len(tx.log.played)} utterances, {len(tx.log.events)} events, "
                f"{time.monotonic() - started:.0f} s",
                flush=True,
            )
    finally:
        if peer is not None:
            await peer.stop()
    return logs


async def engine_alone(robot: Path, corpus: Corpus, keys: set[str]) -> dict[str, str]:
    """The project's whisper provider on each clean whole clip, with the robot's ASR settings."""
    from voiceplatform.audio import array_to_pcm
    from voiceplatform.config.robot import load_robot
    from vp_asr.providers.whisper import WhisperAsr

    provider = WhisperAsr(load_robot(robot).settings.asr)
    out: dict[str, str] = {}
    for key in sorted(keys):
        clip = corpus.clips[key]
        pcm = array_to_pcm(corpus.audio(clip.clean))

        async def once(data: bytes = pcm) -> Any:
            yield data

        texts = [t.text async for t in provider.stream_recognize(once(), clip.rate, "ru-RU")]
        out[key] = " ".join(texts)
    return out


def audio_segments(times: list[float], gap_s: float = 0.1) -> list[tuple[float, float]]:
    """Robot audio arrival as [start, end] spans (frames closer than ``gap_s`` join)."""
    spans: list[tuple[float, float]] = []
    for t in times:
        if spans and t - spans[-1][1] <= gap_s:
            spans[-1] = (spans[-1][0], round(t + 0.02, 3))
        else:
            spans.append((round(t, 3), round(t + 0.02, 3)))
    return spans


def format_table(summaries: dict[str, dict[str, Any]]) -> str:
    def f(v: Any, fmt: str = "{:.3f}") -> str:
        return "-" if v is None else fmt.format(v)

    cols = list(summaries)
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("utterances (plain+pause)", lambda s: str(s["utterances"])),
        ("WER through the platform", lambda s: f(s["wer_platform"])),
        ("WER engine alone (clean clip)", lambda s: f(s["wer_engine"])),
        (
            "  WER platform, plain / pause",
            lambda s: f"{f(s['wer_platform_plain'])} / {f(s['wer_platform_pause'])}",
        ),
        ("split rate (all / pause)", lambda s: f"{f(s['split_rate'])} / {f(s['split_rate_pause'])}"),
        ("stale replies played (must be 0)", lambda s: str(s["stale_replies"])),
        ("replies per utterance (want 1)", lambda s: f(s["replies_per_utterance"])),
        ("  share with exactly 1 / no reply", lambda s: f"{f(s['one_reply_share'])} / {s['no_reply']}"),
        ("backchannels cut the robot", lambda s: f"{s['backchannel_cuts']}/{s['backchannels_over_speech']}"),
        ("  robot replies to backchannels", lambda s: str(s["backchannel_replies"])),
        (
            "v2v ms p50 / p95 / p99",
            lambda s: "/".join(f(s["v2v_ms"][p], "{:.0f}") for p in ("p50", "p95", "p99")),
        ),
        ("intent accuracy", lambda s: f"{f(s['intent_accuracy'])} (n={s['intent_scored']})"),
        ("caller turns outside utterances", lambda s: str(s["spurious_turns"])),
    ]
    lines = [f"{'metric':36}" + "".join(f"{c:>22}" for c in cols)]
    for label, get in rows:
        lines.append(f"{label:36}" + "".join(f"{get(summaries[c]):>22}" for c in cols))
    return "\n".join(lines)


def report(
    args: argparse.Namespace, corpus: Corpus, logs: list[CallLog], engine: dict[str, str]
) -> dict[str, Any]:
    dialog = json.loads((args.robot / "dialog.json").read_text(encoding="utf-8"))
    texts = {u.uid: (u.full_text, u.label) for u in BY_ID.values()}
    per_rate: dict[int, list[UttResult]] = {}
    spurious: dict[int, int] = {}
    for log in logs:
        results, extra = analyze_call(log, texts, dialog, LABELS)
        per_rate.setdefault(log.rate, []).extend(results)
        spurious[log.rate] = spurious.get(log.rate, 0) + extra
    summaries = {
        f"{rate // 1000}k": summarize(res, engine, spurious[rate], sum(lg.rate == rate for lg in logs))
        for rate, res in per_rate.items()
    }
    every = [r for res in per_rate.values() for r in res]
    summaries["all"] = summarize(every, engine, sum(spurious.values()), len(logs))
    by_voice = {
        voice: summarize(
            [r for r in every if r.voice == voice], engine, 0, sum(lg.voice == voice for lg in logs)
        )
        for voice in sorted({lg.voice for lg in logs})
    }
    return {
        "transport": "phone" if args.phone else "web",
        "robot": args.robot.name,
        "voices": sorted({lg.voice for lg in logs}),
        "rates": args.rates,
        "snr_db": args.snr,
        "corpus": str(corpus.folder),
        "notes": corpus.notes,
        "metrics": summaries,
        "by_voice": by_voice,
        "utterances": [asdict(r) for r in every],
        "engine_transcripts": engine,
        "call_errors": [lg.error for lg in logs if lg.error],
        "calls": [
            {
                "voice": lg.voice,
                "rate": lg.rate,
                "transport": lg.transport,
                "played": [asdict(p) for p in lg.played],
                "events": lg.events,
                "robot_audio": audio_segments(lg.audio),
            }
            for lg in logs
        ],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.robot = args.robot.resolve()
    uids = sorted({u for _, s, _ in plan(args, ["x"]) for pair in s for u in pair if u})
    corpus = build_corpus(args.voices, args.snr, uids)
    for note in corpus.notes:
        print("note:", note)
    voices = [v for v in args.voices if v in VOICES and any(k.split("|")[1] == v for k in corpus.clips)]
    if not voices:
        print("no usable voice", file=sys.stderr)
        return 2
    calls = plan(args, voices)
    work = Path(tempfile.mkdtemp(prefix="vp-conv-"))
    infra, env = platform_env(work, args.phone)
    env["ROBOTS_DIR"] = str(args.robot.parent)
    first = free_block(14)  # gateway-web, then one port per other service
    port = first
    procs = start_services(env, work / "logs", port, first_port=first + 1, extra_env=infra.service_env)
    try:
        if not wait_ready(f"http://127.0.0.1:{port}/health", READY_TIMEOUT_S, procs):
            print("platform not ready; logs in", work / "logs", file=sys.stderr)
            return 1
        logs = asyncio.run(run_calls(args, corpus, calls, env, port))
    finally:
        stop_services(procs)
        infra.stop()
    keys = {f"{p.uid}|{p.voice}|{p.rate}" for lg in logs for p in lg.played if p.kind != "backchannel"}
    engine = asyncio.run(engine_alone(args.robot, corpus, keys))
    result = report(args, corpus, logs, engine)
    print()
    print(format_table(result["metrics"]))
    print(f"\n{'voice (all rates)':20} {'WER platform':>12} {'WER engine':>11} {'split':>6} {'intent':>7}")
    for voice, m in result["by_voice"].items():
        cells = [m["wer_platform"], m["wer_engine"], m["split_rate"], m["intent_accuracy"]]
        print(
            f"{voice:20}"
            + "".join(
                f" {'-' if c is None else f'{c:.3f}':>{w}}"
                for c, w in zip(cells, (12, 11, 6, 7), strict=True)
            )
        )
    print(f"\nlogs: {work / 'logs'}")
    if args.json:
        args.json.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
        print(f"report: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
