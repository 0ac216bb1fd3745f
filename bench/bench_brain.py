"""Intent accuracy of the offline brain (the ``script`` engine) and topic accuracy of the router.

The labelled set (bench/data/brain_ru.json) holds caller phrases in lower case without punctuation,
misspelt the way recognizers garble them, numbers as words, plus off-topic talk that must end in the
fallback ("не понял"). Each phrase is decided in its dialogue state twice: keywords only, and
keywords + the sentence encoder. Prints accuracy, the misses and p50/p95 milliseconds per decision
(the encoder's one-time load is excluded: it happens at provider start). Then the same for the
prompt-router's topics (bench/data/topics_ru.json): "keep" phrases must not switch the prompt.

    .venv/bin/python bench/bench_brain.py [--data bench/data/brain_ru.json] [--min-similarity 0.55]
        [--sweep] [--misses]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

from voiceplatform.config import load_robot
from voiceplatform.numerals import words_to_digits
from vp_llm.script_engine import DialogScript, ScriptState, Step
from vp_router.routing import PromptRoutes

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data" / "brain_ru.json"
TOPICS = ROOT / "bench" / "data" / "topics_ru.json"


@dataclass
class Case:
    state: str
    text: str
    expect: str


def label(step: Step) -> str:
    return "fallback" if step.how == "fallback" else step.intent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def decide_all(script: DialogScript, cases: list[Case], meaning: bool) -> tuple[list[str], list[float]]:
    got: list[str] = []
    ms: list[float] = []
    words_to_digits.cache_clear()  # each pass pays the number-word conversion
    for case in cases:
        started = time.perf_counter()
        if meaning:
            step = await script.respond(ScriptState(state=case.state), "default", case.text)
        else:
            step = script.step(case.state, "default", case.text)
        ms.append((time.perf_counter() - started) * 1000)
        got.append(label(step))
    return got, ms


def report(
    name: str,
    cases: list[Case],
    got: list[str],
    ms: list[float],
    show_misses: bool,
    rejected: str = "fallback",
) -> float:
    right = sum(g == c.expect for g, c in zip(got, cases, strict=True))
    off = [(g, c) for g, c in zip(got, cases, strict=True) if c.expect == rejected]
    off_right = sum(g == rejected for g, _ in off)
    accuracy = right / len(cases)
    print(
        f"{name:<26} accuracy {accuracy:6.1%} ({right}/{len(cases)})  off-topic rejected "
        f"{off_right}/{len(off)}  p50 {percentile(ms, 50):6.2f} ms  p95 {percentile(ms, 95):6.2f} ms"
    )
    if show_misses:
        for g, c in zip(got, cases, strict=True):
            if g != c.expect:
                print(f"    miss [{c.state}] {c.text!r}: expected {c.expect}, got {g}")
    return accuracy


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--min-similarity", type=float, default=None, help="override dialog.json's")
    parser.add_argument("--sweep", action="store_true", help="accuracy over a range of minimum similarities")
    parser.add_argument("--misses", action="store_true", help="list every wrong decision")
    args = parser.parse_args()

    data = json.loads(args.data.read_text(encoding="utf-8"))
    cases = [Case(c["state"], c["text"], c["expect"]) for c in data["cases"]]
    robot = load_robot(ROOT / "robots" / data["robot"])
    script = DialogScript.load(robot.dialog_path, robot.settings.language)
    if args.min_similarity is not None:
        script.min_similarity = args.min_similarity
    started = time.perf_counter()
    script.index.build()
    print(
        f"robot {robot.name}: {len(cases)} phrases, {len(script.index)} example phrases embedded in "
        f"{(time.perf_counter() - started) * 1000:.0f} ms (encoder load included), "
        f"min_similarity {script.min_similarity}"
    )
    got, ms = await decide_all(script, cases, meaning=False)
    report("keywords only", cases, got, ms, args.misses)
    got, ms = await decide_all(script, cases, meaning=True)
    report("keywords + encoder", cases, got, ms, args.misses)
    await topics(args.misses)
    if args.sweep:
        for threshold in (0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65):
            script.min_similarity = threshold
            got, ms = await decide_all(script, cases, meaning=True)
            report(f"  min_sim {threshold:.2f}", cases, got, ms, False)


async def topics(show_misses: bool) -> None:
    data = json.loads(TOPICS.read_text(encoding="utf-8"))
    cases = [Case("", c["text"], c["expect"]) for c in data["cases"]]
    routes = PromptRoutes(load_robot(ROOT / "robots" / data["robot"]))
    routes.index.build()
    print(f"robot {data['robot']}: {len(cases)} topic phrases, min_similarity {routes.min_similarity}")
    for name, meaning in (("keywords only", False), ("keywords + encoder", True)):
        got: list[str] = []
        ms: list[float] = []
        words_to_digits.cache_clear()
        for case in cases:
            started = time.perf_counter()
            route = await routes.classify(case.text) if meaning else routes.by_keywords(case.text)
            ms.append((time.perf_counter() - started) * 1000)
            got.append(route.prompt_id if route is not None else "keep")
        report(f"topics: {name}", cases, got, ms, show_misses, rejected="keep")


if __name__ == "__main__":
    asyncio.run(main())
