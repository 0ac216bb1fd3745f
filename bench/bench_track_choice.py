"""How well and how fast an llm_script robot picks its recording (the meaning match), and what
playing a recording costs the TTS stage.

The labelled set (bench/data/tracks_ru.json) holds caller phrases the way recognizers give them,
none of them an example of the manifest, plus off-topic talk that must fall through (null). For
each threshold: right choices in all, on-topic right, off-topic rejected. Then milliseconds per
choice (encode one phrase on the encoder's thread + nearest example; the one-time load of the
encoder and embedding of the examples are excluded: they happen at service start), and the TTS
side: decoding + resampling a recording the first time, and a cached one. Last, whole turns
through the LLM service on the in-memory bus (request → first sentence), against the script
engine robot pipeline_russian on the same phrases.

    .venv/bin/python bench/bench_track_choice.py [--robot robots/llm_script_russian] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from voiceplatform import subjects
from voiceplatform.bus import Envelope
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.config import RobotRegistry
from voiceplatform.config.tracks import _pcm, load_tracks, track_pcm
from voiceplatform.wire import LlmRequest, LlmSentence
from vp_llm.app import LlmService
from vp_llm.settings import LlmSettings
from vp_llm.track_choice import TrackChooser

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data" / "tracks_ru.json"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def figures(name: str, ms: list[float]) -> None:
    p50, p95, p99 = (percentile(ms, q) for q in (50, 95, 99))
    print(f"{name}: p50 {p50:.2f} ms, p95 {p95:.2f} ms, p99 {p99:.2f} ms (n={len(ms)})")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--robot", type=Path, default=ROOT / "robots" / "llm_script_russian")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--misses", action="store_true")
    args = parser.parse_args()
    tracks = load_tracks(args.robot)
    chooser = TrackChooser(tracks)
    started = time.perf_counter()
    await chooser.index.ready(120)
    print(f"encoder load + {len(chooser.index)} phrases embedded: {time.perf_counter() - started:.2f} s")
    cases = json.loads(args.data.read_text(encoding="utf-8"))["cases"]

    scored = []
    for case in cases:
        match = await chooser.index.anearest(case["text"])
        assert match is not None
        scored.append((case, match))
    on_topic = [c for c in cases if c["expect"]]
    print(f"{len(cases)} phrases, {len(on_topic)} on-topic, {len(cases) - len(on_topic)} off-topic")
    for threshold in (0.4, 0.45, 0.5, 0.55, 0.6):
        got = [(c["expect"], m.label if m.score >= threshold else None) for c, m in scored]
        right = sum(e == g for e, g in got)
        on = sum(e == g for e, g in got if e)
        off = sum(g is None for e, g in got if not e)
        mark = " (manifest)" if abs(threshold - tracks.manifest.min_similarity) < 1e-9 else ""
        off_topic = len(cases) - len(on_topic)
        print(
            f"min_similarity {threshold:.2f}{mark}: {right}/{len(cases)} right; "
            f"on-topic {on}/{len(on_topic)}, off-topic rejected {off}/{off_topic}"
        )
    if args.misses:
        for c, m in scored:
            if (m.label if m.score >= tracks.manifest.min_similarity else None) != c["expect"]:
                print(
                    f"  miss: {c['text']!r} expect {c['expect']} got {m.label} {m.score:.3f} ({m.example!r})"
                )

    ms: list[float] = []
    for _ in range(args.rounds):
        for case in cases:
            t = time.perf_counter()
            await chooser.by_meaning(case["text"])
            ms.append((time.perf_counter() - t) * 1000)
    figures("meaning choice per turn", ms)

    first: list[float] = []
    cached: list[float] = []
    for _ in range(args.rounds):
        _pcm.clear()
        for track in tracks.manifest.tracks:
            for rate in (8000, 16000):
                t = time.perf_counter()
                track_pcm(tracks.path_of(track), rate)
                first.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                track_pcm(tracks.path_of(track), rate)
                cached.append((time.perf_counter() - t) * 1000)
    figures("recording decode + resample (first play per file and rate)", first)
    figures("recording from the cache", cached)
    await service_turns(args.robot.parent, [c["text"] for c in cases], args.rounds)


async def service_turns(robots_dir: Path, phrases: list[str], rounds: int) -> None:
    """llm.request → llm.sentence through the LLM service (in-memory bus): the recorded-reply robot
    against the script engine of pipeline_russian on the same phrases (it matches by meaning too)."""
    broker = MemoryBroker()
    service = LlmService(LlmSettings(), robots=RobotRegistry(robots_dir))
    await service.start(broker.bus("llm"))
    sent: dict[str, float] = {}
    took: dict[str, list[float]] = {}

    async def on_sentence(env: Envelope) -> None:
        msg = env.message
        if isinstance(msg, LlmSentence) and msg.index == 0 and msg.turn_id in sent:
            took.setdefault(msg.turn_id.split(":")[0], []).append(
                (time.perf_counter() - sent.pop(msg.turn_id)) * 1000
            )

    await broker.bus("watch").subscribe(subjects.ANY_LLM_SENTENCE, on_sentence)
    router = broker.bus("router")
    try:
        await service.tracks.ready(service.robots.get("llm_script_russian"), 120)
        for n in range(rounds):
            for i, text in enumerate(phrases):
                for robot in ("llm_script_russian", "pipeline_russian"):
                    turn_id = f"{robot}:{n}:{i}"
                    req = LlmRequest(
                        call_id="bench",
                        turn_id=turn_id,
                        robot=robot,
                        prompt_id="default",
                        system_prompt="",
                        history=[],
                        user_text=text,
                        sample_rate=16000,
                    )
                    sent[turn_id] = time.perf_counter()
                    await router.publish(subjects.llm_request("bench"), req)
                    while turn_id in sent:
                        await asyncio.sleep(0.001)
    finally:
        await service.drain(1.0)
    for robot, ms in took.items():
        figures(f"llm service turn, {robot} (request to first sentence)", ms)


if __name__ == "__main__":
    asyncio.run(main())
