"""End of turn: how often a reader's pause splits a turn, and how long a finished turn waits.

Run: ``.venv/bin/python bench/bench_turns.py [--sentences 14] [--noise 60,300]``. Russian sentences are
synthesized (espeak-ng -v ru and festival's msu_ru_nsh, 16 kHz, into a temp dir) twice: whole, and
as two halves joined by a silence of 0.4-1.2 s (a reader's mid-sentence pause); light white noise
is added. Every clip goes through the service's own per-frame path (``FrameScorer`` + the segmenter
the session builds), at 16 kHz and at 8 kHz, with the energy VAD and with silero, under several
end-of-turn policies. The end-of-turn model runs where the session runs it (at each pause, on the
turn's audio) and its answer reaches the segmenter after its measured inference time.

Printed: split = share of clips cut into more than one turn; hang-over = speech end (the last loud
sample) -> vad.speech_ended, mean and p90, over all clips whose last turn ended; never ended = clips
whose turn did not end (the VAD took the noise for speech); model accuracy on
whole sentences vs the first half alone (cut at the pause); inference time p50/p95.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from voiceplatform.audio import frames, read_wav, resample
from voiceplatform.config import VadConfig
from voiceplatform.wire.messages import FRAME_MS
from vp_vad.eot import SmartTurn
from vp_vad.providers import build_model
from vp_vad.segmenter import FrameScorer, SpeechEnd, SpeechPause, SpeechStart
from vp_vad.session import build_segmenter

Pcm = npt.NDArray[np.int16]

# "|" marks the reader's pause (and the cut for the model's "incomplete" clips)
SENTENCES = [
    "Я хотел бы записаться | на приём к врачу на завтра.",
    "Скажите, пожалуйста, | сколько стоит доставка до Москвы?",
    "О, | это очень интересное предложение.",
    "Меня зовут Анна, | я работаю учителем в школе.",
    "Ну, | я думаю, что это слишком дорого для меня.",
    "Мы переехали в этот город | три года назад.",
    "Когда вы сможете | привезти заказ?",
    "Я не уверен, | что правильно понял ваш вопрос.",
    "У меня есть собака, | и я ищу для неё корм.",
    "Вчера вечером | мы долго гуляли по набережной.",
    "Подскажите, | где находится ближайшее отделение банка?",
    "Я звоню по поводу | вчерашнего заказа.",
    "Это был длинный день, | и я очень устал.",
    "Можно мне | оплатить картой?",
]
PAUSES_S = [0.4, 0.6, 0.8, 1.0, 1.2]
LEAD_MS, TAIL_MS = 500, 2500
EOT_PRE_ROLL_FRAMES = 25  # as the session: audio before the confirmed start goes to the model


def synth(text: str, engine: str, tmp: Path) -> Pcm:
    wav = tmp / "out.wav"
    if engine == "festival":
        txt = tmp / "in.txt"
        txt.write_text(text, encoding="utf-8")
        cmd = ["text2wave", "-eval", "(voice_msu_ru_nsh_clunits)", str(txt), "-o", str(wav)]
    else:
        cmd = ["espeak-ng", "-v", "ru", "-w", str(wav), text]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    samples, rate = read_wav(wav)
    samples = resample(samples, rate, 16000)
    loud = np.nonzero(np.abs(samples.astype(np.int32)) > 300)[0]
    return samples[loud[0] : loud[-1] + 1]


@dataclass
class Clip:
    engine: str
    text: str
    paused: bool
    audio: Pcm  # 16 kHz, clean, with lead and tail silence
    speech_end_ms: int
    first_half: Pcm  # for the model's accuracy
    whole: Pcm


def make_clips(n: int, engines: list[str]) -> list[Clip]:
    clips: list[Clip] = []
    lead, tail = np.zeros(16 * LEAD_MS, np.int16), np.zeros(16 * TAIL_MS, np.int16)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        for engine in engines:
            for i, sentence in enumerate(SENTENCES[:n]):
                a, b = (s.strip() for s in sentence.split("|"))
                whole = synth(f"{a} {b}", engine, tmp)
                first, second = synth(a, engine, tmp), synth(b, engine, tmp)
                gap = np.zeros(int(16000 * PAUSES_S[i % len(PAUSES_S)]), np.int16)
                for paused, body in ((False, whole), (True, np.concatenate([first, gap, second]))):
                    audio = np.concatenate([lead, body, tail])
                    end_ms = (LEAD_MS * 16 + body.size) // 16
                    clips.append(Clip(engine, sentence, paused, audio, end_ms, first, whole))
    return clips


def add_noise(audio: Pcm, rms: float, seed: int) -> Pcm:
    if rms <= 0:
        return audio
    noise = np.random.default_rng(seed).normal(0, rms, audio.size)
    return np.clip(audio + noise, -32768, 32767).astype(np.int16)


@dataclass
class Outcome:
    turns: int
    last_end_ms: int | None  # when vad.speech_ended of the last turn went out (stream time)


async def run_clip(
    audio: Pcm, rate: int, cfg: VadConfig, eot: SmartTurn | None, times: list[float]
) -> Outcome:
    scorer = FrameScorer(await build_model(cfg), rate)
    seg = build_segmenter(cfg, eot is not None)
    ring: list[Pcm] = []
    pending: tuple[int, int, float] | None = None  # (deliver at seq, pause_id, probability)
    turns, last_end = 0, None
    for seq, frame in enumerate(frames(audio, rate // 50)):
        ring.append(frame)
        events = seg.push(seq, scorer.score(frame))
        if pending is not None and seq >= pending[0]:
            events += seg.set_eot(pending[1], pending[2])
            pending = None
        for ev in events:
            if isinstance(ev, SpeechStart):
                turns += 1
            elif isinstance(ev, SpeechEnd):
                last_end = (seq + 1) * FRAME_MS
                pending = None
            elif isinstance(ev, SpeechPause) and eot is not None:
                first = max(0, ev.start_ms // FRAME_MS - EOT_PRE_ROLL_FRAMES)
                started = time.perf_counter()
                p = eot.complete_probability(np.concatenate(ring[first : ev.seq + 1]), rate)
                ms = (time.perf_counter() - started) * 1000
                times.append(ms)
                # the answer arrives after the inference time (the frames go on meanwhile)
                pending = (seq + max(1, math.ceil(ms / FRAME_MS)), ev.pause_id, p)
    return Outcome(turns, last_end)


async def measure(
    clips: list[Clip], cfg: VadConfig, rate: int, noise: float, eot: SmartTurn | None, times: list[float]
) -> str:
    split = {True: 0, False: 0}
    count = {True: 0, False: 0}
    hang: list[float] = []
    missed = 0  # the turn never ended (energy VAD in noise above its threshold)
    for k, clip in enumerate(clips):
        audio = add_noise(resample(clip.audio, 16000, rate), noise, seed=k)
        out = await run_clip(audio, rate, cfg, eot, times)
        count[clip.paused] += 1
        split[clip.paused] += out.turns > 1
        if out.last_end_ms is None or out.turns == 0:
            missed += 1
        else:
            hang.append(out.last_end_ms - clip.speech_end_ms)
    mean = float(np.mean(hang)) if hang else float("nan")
    return (
        f"{split[True] / count[True]:>12.0%} {split[False] / count[False]:>11.0%} "
        f"{mean:>7.0f}ms {pct(hang, 90):>5.0f} {missed:>11}"
    )


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=len(SENTENCES))
    parser.add_argument("--noise", default="60", help="white noise RMS levels (int16 units), comma-separated")
    parser.add_argument("--vads", default="energy,silero")
    parser.add_argument("--rates", default="16000,8000")
    args = parser.parse_args()
    engines = [e for e, tool in (("espeak", "espeak-ng"), ("festival", "text2wave")) if shutil.which(tool)]
    if not engines:
        raise SystemExit("neither espeak-ng nor festival (text2wave) is installed")
    t0 = time.perf_counter()
    clips = make_clips(args.sentences, engines)
    print(
        f"{len(clips)} clips ({', '.join(engines)}), synthesized in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    eot = SmartTurn()
    base = VadConfig()
    policies: list[tuple[str, VadConfig, bool]] = [
        ("silence 500 ms (today)", replace_cfg(base, eot_model="none"), False),
        ("silence 700 ms", replace_cfg(base, eot_model="none", silence_frames=35), False),
        ("silence 1000 ms", replace_cfg(base, eot_model="none", silence_frames=50), False),
        (f"model +{base.eot_short_ms}/{base.eot_long_ms} (default)", base, True),
        ("model +200/1200", replace_cfg(base, eot_short_ms=200, eot_long_ms=1200), True),
    ]
    times: list[float] = []
    header = (
        f"{'noise':>5} {'vad':7} {'rate':>5} {'policy':26} {'split paused':>12} {'split whole':>11} "
        f"{'hang mean':>9} {'p90':>5} {'never ended':>11}"
    )
    print(header, flush=True)
    print("-" * len(header), flush=True)
    for noise in (float(n) for n in args.noise.split(",")):
        for vad in args.vads.split(","):
            for rate in (int(r) for r in args.rates.split(",")):
                for label, cfg, use_model in policies:
                    model = eot if use_model else None
                    row = await measure(clips, replace_cfg(cfg, provider=vad), rate, noise, model, times)
                    print(f"{noise:>5g} {vad:7} {rate:>5} {label:26} {row}", flush=True)
    print(flush=True)
    print(
        "end-of-turn model alone (whole sentence = complete, first half = cut at the pause), +200 ms silence:"
    )
    for rate in (int(r) for r in args.rates.split(",")):
        for engine in engines:
            sel = [c for c in clips if c.engine == engine and not c.paused]
            pad = np.zeros(rate // 5, np.int16)
            p_whole = [
                eot.complete_probability(np.concatenate([resample(c.whole, 16000, rate), pad]), rate)
                for c in sel
            ]
            p_cut = [
                eot.complete_probability(np.concatenate([resample(c.first_half, 16000, rate), pad]), rate)
                for c in sel
            ]
            ok_whole = sum(p >= base.eot_threshold for p in p_whole)
            ok_cut = sum(p < base.eot_threshold for p in p_cut)
            print(
                f"  {engine:8} {rate:>5}: complete judged complete {ok_whole}/{len(sel)}, "
                f"cut judged incomplete {ok_cut}/{len(sel)}; "
                f"mean p whole {np.mean(p_whole):.2f}, cut {np.mean(p_cut):.2f}"
            )
    print(
        f"\ninference (features + model, 1 thread): p50 {pct(times, 50):.0f} ms, p95 {pct(times, 95):.0f} ms "
        f"over {len(times)} calls"
    )


def replace_cfg(cfg: VadConfig, **changes: object) -> VadConfig:
    return VadConfig.model_validate({**cfg.model_dump(), **changes})


if __name__ == "__main__":
    asyncio.run(main())
