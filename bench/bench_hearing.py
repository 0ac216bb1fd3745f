"""Hearing benchmark: word error rate of whisper-base alone vs through the ASR session as the platform
runs it, at 16 kHz and at 8 kHz (the clip downsampled as a phone line would), plus the latency from the
turn's end to asr.final with and without speculative recognition.

Engine: the model on each whole clip (no VAD), beam 1 and 5, same decoding options as the provider.
Platform: 20 ms frames on the in-memory bus to the real ASR service, with VAD events from the
platform's energy VAD rules (start after 5 loud frames, pause after 200 ms of quiet, end after 500 ms)
and, for a turn that starts within 1.4 s of the previous turn's end, the gateway's
``control.interrupt(reason="continued")`` at its start. "legacy" is the ASR as it was before this work
(no post-roll, 150 ms tail wait, linear 8->16 kHz interpolation, no speculation, no merge).

    python bench/bench_hearing.py [--limit N] [--speed 4] [--latency-clips 16] [--json out.json]

The corpus (bench/hearing_corpus.py) is synthesized once into ~/.cache/voice-platform/bench-hearing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.hearing_corpus import (  # noqa: E402
    RATE,
    VOCABULARY,
    Clip,
    corpus,
    percentile,
    to_rate,
    tools_available,
    word_error_rate,
)
from voiceplatform import subjects  # noqa: E402
from voiceplatform.audio import resample  # noqa: E402
from voiceplatform.bus import Envelope  # noqa: E402
from voiceplatform.bus.memory import MemoryBroker  # noqa: E402
from voiceplatform.logging import configure_logging  # noqa: E402
from voiceplatform.wire import (  # noqa: E402
    AsrFinal,
    AssignRequest,
    AudioChunk,
    ControlInterrupt,
    Message,
    VadSpeechEnded,
    VadSpeechPaused,
    VadSpeechResumed,
    VadSpeechStarted,
)
from vp_asr.app import AsrService  # noqa: E402
from vp_asr.providers import whisper, whisper_model  # noqa: E402
from vp_asr.settings import AsrSettings  # noqa: E402

FRAME_S = 0.02
MERGE_GAP_MS = 1400
SCORED = ("plain", "vocab", "paused", "espeak")


def rate_samples(clip: Clip, rate: int) -> np.ndarray:
    return clip.samples if rate == RATE else to_rate(clip.samples, RATE, rate)


# ---- engine alone -------------------------------------------------------------------------------
def engine_pass(
    clips: list[Clip], rate: int, beam: int, **extra: Any
) -> tuple[list[str], list[tuple[float, float]]]:
    """Texts, and (audio seconds, decode ms) per clip."""
    model = whisper_model.shared_model()
    texts: list[str] = []
    timings: list[tuple[float, float]] = []
    for clip in clips:
        samples = rate_samples(clip, rate)
        audio = whisper.to_whisper_rate(samples, rate)
        started = time.monotonic()
        segments, _ = model.transcribe(
            audio,
            language="ru",
            beam_size=beam,
            temperature=0.0,
            condition_on_previous_text=False,
            max_new_tokens=96,
            vad_filter=False,
            without_timestamps=True,
            **extra,
        )
        texts.append(" ".join(s.text.strip() for s in segments).strip())
        timings.append((samples.size / rate, (time.monotonic() - started) * 1000))
    return texts, timings


# ---- through the platform -------------------------------------------------------------------------
@dataclass(frozen=True)
class Mode:
    name: str
    legacy: bool = False
    speculate: bool = True
    merge: bool = True
    beam: int = 1
    vocabulary: bool = False


class BenchVad:
    """The energy VAD's rules, with the turn-taking VAD's pause events."""

    def __init__(self, rate: int, call_id: str) -> None:
        self.call_id = call_id
        self.threshold = 200.0
        self.min_speech, self.pause_frames, self.end_frames = 5, 10, 25
        self.in_speech = self.paused = False
        self.run = self.run_start = self.last_speech = self.silence = self.start_seq = 0
        self.turns = 0
        self.turn_id = ""

    def push(self, seq: int, frame: np.ndarray) -> list[Message]:
        loud = float(np.sqrt(np.mean(frame.astype(np.float64) ** 2))) > self.threshold
        out: list[Message] = []
        cid, tid = self.call_id, self.turn_id
        if not self.in_speech:
            self.run = self.run + 1 if loud else 0
            if self.run == 1:
                self.run_start = seq
            if self.run >= self.min_speech:
                self.turns += 1
                self.turn_id = f"{cid}-t{self.turns}"
                self.in_speech, self.paused, self.run = True, False, 0
                self.start_seq, self.last_speech, self.silence = self.run_start, seq, 0
                out.append(
                    VadSpeechStarted(call_id=cid, turn_id=self.turn_id, audio_offset_ms=self.start_seq * 20)
                )
            return out
        end_ms = (self.last_speech + 1) * 20
        speech_ms = end_ms - self.start_seq * 20
        if loud:
            if self.paused:
                out.append(VadSpeechResumed(call_id=cid, turn_id=tid, audio_offset_ms=seq * 20))
            self.paused, self.last_speech, self.silence = False, seq, 0
            return out
        self.silence += 1
        if self.silence == self.pause_frames:
            self.paused = True
            out.append(VadSpeechPaused(call_id=cid, turn_id=tid, audio_offset_ms=end_ms, speech_ms=speech_ms))
        if self.silence >= self.end_frames:
            self.in_speech = False
            out.append(VadSpeechEnded(call_id=cid, turn_id=tid, audio_offset_ms=end_ms, speech_ms=speech_ms))
        return out


def _legacy_to_whisper_rate(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    return resample(samples, sample_rate, RATE).astype(np.float32) / 32768.0


async def platform_pass(clips: list[Clip], rate: int, mode: Mode, speed: float) -> dict[str, Any]:
    original = whisper.to_whisper_rate
    if mode.legacy:
        whisper.to_whisper_rate = _legacy_to_whisper_rate  # type: ignore[assignment]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return await _platform_pass(clips, rate, mode, speed, Path(tmp))
    finally:
        whisper.to_whisper_rate = original  # type: ignore[assignment]


async def _platform_pass(
    clips: list[Clip], rate: int, mode: Mode, speed: float, robots: Path
) -> dict[str, Any]:
    (robots / "bench").mkdir()
    asr = {"provider": "whisper", "beam_size": mode.beam}
    if mode.vocabulary:
        asr["vocabulary"] = VOCABULARY  # type: ignore[assignment]
    config = {"mode": "pipeline", "llm": {"provider": "openai"}, "asr": asr}
    (robots / "bench" / "config.json").write_text(json.dumps(config), encoding="utf-8")
    settings = AsrSettings(
        robots_dir=robots,
        instance_id="bench-hearing",
        post_roll_ms=0 if mode.legacy else AsrSettings().post_roll_ms,
        tail_wait_ms=150 if mode.legacy else AsrSettings().tail_wait_ms,
        speculate=mode.speculate and not mode.legacy,
    )
    broker = MemoryBroker()
    service = AsrService(settings)
    await service.start(broker.bus("asr"))
    bus = broker.bus("gateway")
    call_id = f"hear-{mode.name.replace('+', '-')}-{rate}"
    finals: dict[str, tuple[AsrFinal, float]] = {}

    async def on_final(env: Envelope) -> None:
        if isinstance(env.message, AsrFinal):
            finals[env.message.turn_id] = (env.message, time.monotonic())

    await bus.subscribe(subjects.asr(call_id), on_final)
    await bus.request(
        subjects.assign("asr"), AssignRequest(call_id=call_id, role="asr", robot="bench", sample_rate=rate)
    )
    vad = BenchVad(rate, call_id)
    turn_clip: dict[str, int] = {}
    ended_at: dict[str, float] = {}  # wall time the end was published
    speech_end_at: dict[str, float] = {}  # wall time the last speech frame was sent
    last_end_ms = -(10**9)
    last_turn = ""
    frame_n = rate // 50
    seq = 0
    started = time.monotonic()
    pad = np.zeros(int(rate * 0.8), dtype=np.int16)
    for index, clip in enumerate(clips):
        samples = np.concatenate([rate_samples(clip, rate), pad])
        samples = samples[: samples.size - samples.size % frame_n]
        for frame in samples.reshape(-1, frame_n):
            delay = started + seq * FRAME_S / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await bus.publish(
                subjects.audio_in(call_id),
                AudioChunk(call_id=call_id, seq=seq, sample_rate=rate, pcm=frame.tobytes()),
            )
            for event in vad.push(seq, frame):
                await bus.publish(subjects.vad(call_id), event)
                if isinstance(event, VadSpeechStarted):
                    turn_clip[event.turn_id] = index
                    if mode.merge and not mode.legacy and event.audio_offset_ms - last_end_ms < MERGE_GAP_MS:
                        interrupt = ControlInterrupt(
                            call_id=call_id, turn_id=last_turn, by_turn_id=event.turn_id, reason="continued"
                        )
                        await bus.publish(subjects.control(call_id), interrupt)
                elif isinstance(event, VadSpeechEnded):
                    ended_at[event.turn_id] = time.monotonic()
                    speech_end_at[event.turn_id] = started + event.audio_offset_ms / 1000 / speed
                    last_end_ms, last_turn = event.audio_offset_ms, event.turn_id
            seq += 1
    deadline = time.monotonic() + 120
    while len(finals) < len(ended_at) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await service.drain(5)
    merged = {m for final, _ in finals.values() for m in final.merged}
    texts = [""] * len(clips)
    for turn_id in sorted(finals, key=lambda t: int(t.rsplit("t", 1)[1])):
        if turn_id not in merged:
            index = turn_clip[turn_id]
            texts[index] = f"{texts[index]} {finals[turn_id][0].text}".strip()
    after_end = [(at - ended_at[t]) * 1000 for t, (_, at) in finals.items() if t in ended_at]
    after_speech = [(at - speech_end_at[t]) * 1000 for t, (_, at) in finals.items() if t in speech_end_at]
    return {
        "texts": texts,
        "after_end_ms": after_end,
        "after_speech_ms": after_speech,
        "turns": len(ended_at),
    }


# ---- report ---------------------------------------------------------------------------------------
def scores(clips: list[Clip], texts: list[str]) -> dict[str, Any]:
    refs = [c.reference if c.kind in SCORED[:3] else "" for c in clips]
    by_kind = {
        kind: round(
            100
            * word_error_rate(
                [c.reference for c in clips if c.kind == kind],
                [t for c, t in zip(clips, texts, strict=False) if c.kind == kind],
            ),
            1,
        )
        for kind in SCORED
        if any(c.kind == kind for c in clips)
    }
    noise = [t for c, t in zip(clips, texts, strict=False) if c.kind == "noise"]
    return {
        "wer": round(100 * word_error_rate(refs, texts), 1),
        **by_kind,
        "noise_with_text": sum(1 for t in noise if t),
    }


def row(name: str, result: dict[str, Any], extra: str = "") -> str:
    kinds = " ".join(f"{k}={result.get(k, '-'):>5}" for k in SCORED)
    noise = result["noise_with_text"]
    return f"{name:<28} WER(festival) {result['wer']:>5.1f}%  {kinds}  noise_text={noise}  {extra}"


def latency_text(result: dict[str, Any]) -> str:
    end, speech = result["after_end_ms"], result["after_speech_ms"]
    return (
        f"end->final p50 {percentile(end, 50):4.0f} p95 {percentile(end, 95):4.0f} ms; "
        f"speech end->final p50 {percentile(speech, 50):4.0f} p95 {percentile(speech, 95):4.0f} ms"
    )


def beam_timing(clips: list[Clip], repeats: int) -> list[str]:
    """Decode time of beam 1 vs beam 5 on 2, 4, 6 and 8 s of speech, the two interleaved so that a
    busy machine slows both alike; the median over clips and repeats."""
    model = whisper_model.shared_model()
    speech = np.concatenate([c.samples for c in clips if c.kind == "plain"])
    lines = [f"  decode time (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores):"]
    for seconds in (2, 4, 6, 8):
        times: dict[int, list[float]] = {1: [], 5: []}
        for rep in range(repeats):
            start = rep * 3 * RATE
            audio = whisper.to_whisper_rate(speech[start : start + seconds * RATE], RATE)
            for beam in (1, 5) if rep % 2 == 0 else (5, 1):
                started = time.monotonic()
                segments, _ = model.transcribe(
                    audio,
                    language="ru",
                    beam_size=beam,
                    temperature=0.0,
                    without_timestamps=True,
                    condition_on_previous_text=False,
                    max_new_tokens=96,
                    vad_filter=False,
                )
                list(segments)
                times[beam].append((time.monotonic() - started) * 1000)
        cells = "   ".join(
            f"beam {b}: p50 {percentile(v, 50):4.0f} p95 {percentile(v, 95):4.0f} ms"
            for b, v in times.items()
        )
        lines.append(f"  {seconds} s segment  {cells}")
    return lines


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="first N clips only")
    parser.add_argument(
        "--speed", type=float, default=4.0, help="frame pacing for the WER passes (x real time)"
    )
    parser.add_argument("--latency-clips", type=int, default=16, help="clips of the real-time latency passes")
    parser.add_argument("--beam", type=int, default=0, help="platform beam size (0: the AsrConfig default)")
    parser.add_argument("--skip", default="", help="comma list of: engine, beam, vocab, platform, latency")
    parser.add_argument("--beam-repeats", type=int, default=6)
    parser.add_argument("--rates", default="16000,8000", help="call sample rates of the platform passes")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not tools_available():
        sys.exit("needs festival (text2wave, festvox-ru) and espeak-ng")
    configure_logging("bench", "WARNING", json=True)
    skip = set(args.skip.split(","))
    rates = [int(r) for r in args.rates.split(",")]
    clips = corpus(args.limit)
    print(f"{len(clips)} clips, {sum(c.samples.size for c in clips) / RATE:.0f} s of audio", flush=True)
    await asyncio.to_thread(whisper_model.shared_model)
    from voiceplatform.config import AsrConfig

    beam = args.beam or AsrConfig().beam_size
    results: dict[str, Any] = {}
    lines: list[str] = []
    if "engine" not in skip:
        for rate in (16000, 8000):
            for b in (1, 5):
                texts, _ = await asyncio.to_thread(engine_pass, clips, rate, b)
                results[f"engine_{rate}_b{b}"] = res = scores(clips, texts)
                lines.append(row(f"engine {rate // 1000}k beam {b}", res))
                print(lines[-1], flush=True)
    if "beam" not in skip:
        lines += await asyncio.to_thread(beam_timing, clips, args.beam_repeats)
        print("\n".join(lines[-5:]), flush=True)
    if "vocab" not in skip:
        vocab = [c for c in clips if c.kind in ("vocab", "noise")]
        for label, extra in (
            ("none", {}),
            ("hotwords", {"hotwords": ", ".join(VOCABULARY)}),
            ("initial_prompt", {"initial_prompt": ", ".join(VOCABULARY)}),
        ):
            texts, _ = await asyncio.to_thread(engine_pass, vocab, 8000, beam, **extra)
            results[f"vocab_{label}"] = res = scores(vocab, texts)
            lines.append(row(f"vocab clips 8k, {label}", res))
            print(lines[-1], [t for c, t in zip(vocab, texts, strict=False) if c.kind == "noise"], flush=True)
    if "platform" not in skip:
        for rate in rates:
            modes = [Mode("legacy", legacy=True, beam=beam), Mode("platform", beam=beam)]
            if rate == 8000:
                modes.append(Mode("platform+vocabulary", beam=beam, vocabulary=True))
            for mode in modes:
                res = await platform_pass(clips, rate, mode, args.speed)
                results[f"{mode.name}_{rate}"] = out = scores(clips, res["texts"])
                lines.append(row(f"{mode.name} {rate // 1000}k beam {beam}", out))
                print(lines[-1], flush=True)
    if "latency" not in skip:
        half = args.latency_clips // 2  # sentences said at once, and with a pause inside
        subset = [c for c in clips if c.kind == "plain"][:half] + [c for c in clips if c.kind == "paused"][
            :half
        ]
        for rate in rates:
            for spec in (False, True):
                mode = Mode("spec" if spec else "nospec", speculate=spec, beam=beam)
                res = await platform_pass(subset, rate, mode, 1.0)
                out = scores(subset, res["texts"])
                results[f"latency_{mode.name}_{rate}"] = {
                    **out,
                    **{k: res[k] for k in ("after_end_ms", "after_speech_ms")},
                }
                lines.append(row(f"real time {rate // 1000}k {mode.name}", out, latency_text(res)))
                print(lines[-1], flush=True)
    print("\n".join(["", "== summary ==", *lines]))
    if args.json:
        args.json.write_text(json.dumps(results, ensure_ascii=False, indent=1), encoding="utf-8")


if __name__ == "__main__":
    asyncio.run(main())
