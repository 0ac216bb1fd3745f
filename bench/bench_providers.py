"""Cloud providers: latency our client code adds, and failover time when the primary stalls.

(i) Client overhead, per provider (LLM openai / yandex / gemini; TTS yandex, elevenlabs http and ws,
zvukogram; ASR yandex). Each stand-in (``tests/stand_ins``) runs in its OWN PROCESS (spawned), so its
event loop never competes with the client's: in one loop a stand-in writes its whole stream before the
client even reads, which would be billed to the client. The stand-ins have no first-byte hook and
may not be edited, so the child wraps them from outside before ``start()``:
- HTTP / WebSocket stand-ins (uvicorn): the ASGI app in ``stand_in._server.config.app`` is wrapped by
  ``_FirstBodyProbe``, which stamps ``time.monotonic()`` when the app hands a non-empty
  ``http.response.body`` (or a ``websocket.send``) to uvicorn, i.e. the moment the bytes are written to
  the socket (uvicorn writes synchronously in ``send``). Zvukogram only counts the audio download
  (``/texttomp3/…``), not its JSON API calls.
- gRPC (SpeechKit STT): the module's response serializer ``_serialize`` is wrapped (the stand-in looks it
  up when it registers its handler), stamping the first response carrying recognized text: the first
  thing the provider turns into a ``Transcript``.
``time.monotonic()`` is CLOCK_MONOTONIC on Linux, one clock for both processes. The client stamps the
moment the provider's async iterator yields its first chunk. Reported per provider over N runs
(after 2 warm-up runs, one provider instance, so connections are reused as in production):
``overhead`` = client first chunk − stand-in first body byte, and ``e2e`` = call start → first chunk.
The stand-ins answer at once (no scripted delays), so e2e is connect + request + our parsing.

(ii) Failover, through the real service code paths on the in-memory bus:
- TTS: ``vp_tts.app.TtsService``, robot ``tts.provider=elevenlabs`` (stand-in with ``stall_after=0``:
  headers, then silence), ``tts.fallback=["espeak"]``, ``tts.first_audio_timeout_s`` = --deadline;
  sentence published → first ``TtsAudio`` received. Baseline: the same with a healthy stand-in.
- LLM: ``vp_llm.app.LlmService``, robot ``llm.provider=yandex`` (YandexGPT stand-in with
  ``stall_after=0``), ``llm.fallback=["openai"]``, ``llm.first_token_timeout_s`` = --deadline;
  request published → first ``LlmSentence``. Baseline: openai as the primary.

    .venv/bin/python bench/bench_providers.py [--runs 50] [--failover-runs 10] [--deadline 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import multiprocessing as mp
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``tests`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voiceplatform.config import RobotConfig, RobotRegistry
from voiceplatform.config.robot import RobotSettings
from voiceplatform.providers import LlmOptions
from voiceplatform.wire import ChatMessage

WARMUP = 2
MESSAGES = [ChatMessage(role="system", content="Будь краток."), ChatMessage(role="user", content="Привет")]
TEXT = "Добрый день. Чем могу помочь?"
YANDEX_FOLDER = "b1gbenchfolder"
YANDEX_STT_KEY = "AQVN-bench-stt-key"
YANDEX_GPT_KEY = "AQVN-bench-gpt-key"
OPENAI_KEY = "sk-bench-openai-key"
ASR_RATE = 16000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def summary(values: list[float]) -> str:
    if not values:
        return "no samples"
    return f"p50 {pct(values, 50):7.2f}  p95 {pct(values, 95):7.2f}  p99 {pct(values, 99):7.2f}  ms"


def robot(settings: dict[str, Any], env: dict[str, str]) -> RobotConfig:
    return RobotConfig("bench", Path("."), RobotSettings.model_validate(settings), "", {}, env)


# ---- stand-ins in a child process, with a first-byte probe -------------------------------------------


class _FirstBodyProbe:
    """ASGI wrapper: stamps when the app sends a non-empty body / WebSocket message to the server."""

    def __init__(self, app: Any, stamps: list[float], path_prefix: str = "") -> None:
        self.app = app
        self.stamps = stamps
        self.path_prefix = path_prefix

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not scope.get("path", "").startswith(self.path_prefix):
            await self.app(scope, receive, send)
            return

        async def stamped_send(message: Any) -> None:
            # stamp as the message is handed over: uvicorn may await (drain) after writing it
            body = message["type"] == "http.response.body" and message.get("body")
            if body or message["type"] == "websocket.send":
                self.stamps.append(time.monotonic())
            await send(message)

        await self.app(scope, receive, stamped_send)


def _make_stand_in(kind: str, args: dict[str, Any], stamps: list[float]) -> Any:
    if kind == "yandex_stt":
        from tests.stand_ins import yandex_stt_server as stt

        original = stt._serialize

        def serialize(message: Any) -> bytes:
            data = original(message)  # stamp after serializing: grpc writes right after this returns
            event = message.WhichOneof("Event") if not isinstance(message, bytes) else None
            if event in ("partial", "final") and any(a.text for a in getattr(message, event).alternatives):
                stamps.append(time.monotonic())
            return data

        stt._serialize = serialize  # type: ignore[assignment]  # looked up by start()
        return stt.YandexSttStandIn()
    module, cls, prefix = {
        "openai": ("openai_server", "OpenAIStandIn", ""),
        "yandexgpt": ("yandexgpt_server", "YandexGptStandIn", ""),
        "gemini": ("gemini_server", "GeminiStandIn", ""),
        "yandex_tts": ("yandex_tts_server", "YandexTtsStandIn", ""),
        "elevenlabs": ("elevenlabs_server", "ElevenLabsStandIn", ""),
        "zvukogram": ("zvukogram_server", "ZvukogramStandIn", "/texttomp3/"),
    }[kind]
    stand_in = getattr(importlib.import_module(f"tests.stand_ins.{module}"), cls)(**args)
    config = stand_in._server.config  # uvicorn loads config.app when it starts serving
    config.app = _FirstBodyProbe(config.app, stamps, prefix)
    return stand_in


async def _serve(kind: str, args: dict[str, Any], behavior: dict[str, Any], conn: Connection) -> None:
    stamps: list[float] = []
    stand_in = _make_stand_in(kind, args, stamps)
    for key, value in behavior.items():
        setattr(stand_in.behavior, key, value)
    await stand_in.start()
    urls = {
        name: getattr(stand_in, name)
        for name in ("base_url", "endpoint")
        if isinstance(getattr(type(stand_in), name, None), property)
    }
    conn.send(urls)
    loop = asyncio.get_running_loop()
    while (command := await loop.run_in_executor(None, conn.recv)) != "stop":
        if command == "stamps":
            conn.send(list(stamps))
            stamps.clear()
    await stand_in.stop()
    conn.send("stopped")


def _child(kind: str, args: dict[str, Any], behavior: dict[str, Any], conn: Connection) -> None:
    asyncio.run(_serve(kind, args, behavior, conn))


class StandInProcess:
    """A stand-in serving from a spawned process; ``first_bytes()`` returns (and forgets) its stamps."""

    def __init__(self, kind: str, behavior: dict[str, Any] | None = None, **args: Any) -> None:
        self.kind = kind
        self._conn, child_conn = mp.Pipe()
        self._process = mp.Process(target=_child, args=(kind, args, behavior or {}, child_conn), daemon=True)
        self.urls: dict[str, str] = {}

    async def _ask(self, command: str | None) -> Any:
        if command is not None:
            self._conn.send(command)
        return await asyncio.to_thread(self._conn.recv)

    async def first_bytes(self) -> list[float]:
        stamps: list[float] = await self._ask("stamps")
        return stamps

    async def __aenter__(self) -> StandInProcess:
        self._process.start()
        self.urls = await self._ask(None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(EOFError, OSError):
            await asyncio.wait_for(self._ask("stop"), 5.0)
        self._process.join(2.0)
        if self._process.is_alive():
            self._process.kill()


# ---- (i) client overhead ------------------------------------------------------------------------------


async def first_chunk(stream: AsyncIterator[Any]) -> float:
    """Consume the whole stream; return when the first chunk came out (monotonic)."""
    first = 0.0
    async with contextlib.aclosing(stream) as chunks:  # type: ignore[type-var]
        async for chunk in chunks:
            if not first and (getattr(chunk, "text", None) or isinstance(chunk, bytes | bytearray)):
                first = time.monotonic()
    if not first:
        raise RuntimeError("the stream yielded nothing")
    return first


async def asr_audio() -> AsyncIterator[bytes]:
    frame = bytes(2 * ASR_RATE // 50)
    for _ in range(50):  # 1 s of audio, not paced: the stand-in answers by audio length
        yield frame


def build_provider(name: str, urls: dict[str, str]) -> tuple[Any, Callable[[Any], AsyncIterator[Any]]]:
    """The provider (real production class) pointed at the stand-in, and how to open one stream."""
    llm_opts = LlmOptions(temperature=0.3, max_tokens=50)
    if name.startswith("llm."):
        if name == "llm.openai":
            from vp_llm.providers.openai_compat import OpenAICompatible

            cfg = {"llm": {"provider": "openai", "base_url": urls["base_url"], "timeout_s": 5}}
            provider: Any = OpenAICompatible(robot(cfg, {"OPENAI_API_KEY": OPENAI_KEY}))
        elif name == "llm.yandex":
            from vp_llm.providers.yandexgpt import YandexGpt

            opts = {"base_url": urls["base_url"], "folder_id": YANDEX_FOLDER}
            cfg = {"llm": {"provider": "yandex", "timeout_s": 5, "providers": {"yandex": opts}}}
            provider = YandexGpt(robot(cfg, {"YANDEX_API_KEY": YANDEX_GPT_KEY}))
        else:
            from vp_llm.providers.gemini import GeminiLlm

            opts = {"base_url": urls["base_url"], "models": ["gemini-2.5-flash"]}
            cfg = {"llm": {"provider": "gemini", "timeout_s": 5, "providers": {"gemini": opts}}}
            provider = GeminiLlm(robot(cfg, {"GEMINI_API_KEYS": "AIza-bench-key-1"}))
        return provider, lambda p: p.stream_complete(MESSAGES, llm_opts)
    if name == "asr.yandex":
        from vp_asr.providers.yandex import YandexAsr

        opts = {"endpoint": urls["endpoint"], "tls": False, "folder_id": YANDEX_FOLDER}
        cfg = {"asr": {"provider": "yandex", "language": "ru-RU", "providers": {"yandex": opts}}}
        provider = YandexAsr(robot(cfg, {"YANDEX_API_KEY": YANDEX_STT_KEY}))
        return provider, lambda p: p.stream_recognize(asr_audio(), ASR_RATE, "ru-RU")
    tts: dict[str, Any] = {"sample_rate": 16000}
    if name == "tts.yandex":
        from tests.stand_ins.yandex_tts_server import API_KEY as YANDEX_TTS_KEY
        from vp_tts.providers.yandex import YandexTts

        tts |= {
            "provider": "yandex",
            "voice": "jane",
            "providers": {"yandex": {"base_url": urls["base_url"]}},
        }
        provider = YandexTts(robot({"tts": tts}, {"YANDEX_API_KEY": YANDEX_TTS_KEY}))
        voice = "jane"
    elif name.startswith("tts.elevenlabs"):
        from tests.stand_ins.elevenlabs_server import VALID_KEY
        from vp_tts.providers.elevenlabs import ElevenLabsTts

        voice = "21m00Tcm4TlvDq8ikWAM"
        opts = {"base_url": urls["base_url"], "transport": name.rsplit("_", 1)[1]}
        tts |= {"provider": "elevenlabs", "voice": voice, "providers": {"elevenlabs": opts}}
        provider = ElevenLabsTts(robot({"tts": tts}, {"TTS_API_KEY": VALID_KEY}))
    else:
        from tests.stand_ins.zvukogram_server import EMAIL, TOKEN
        from vp_tts.providers.zvukogram import ZvukogramTts

        voice = "Алена"
        tts |= {
            "provider": "zvukogram",
            "voice": voice,
            "providers": {"zvukogram": {"base_url": urls["base_url"]}},
        }
        provider = ZvukogramTts(robot({"tts": tts}, {"TTS_TOKEN": TOKEN, "TTS_EMAIL": EMAIL}))
    return provider, lambda p: p.stream_synthesize(TEXT, voice)


STAND_IN_OF = {
    "llm.openai": "openai",
    "llm.yandex": "yandexgpt",
    "llm.gemini": "gemini",
    "tts.yandex": "yandex_tts",
    "tts.elevenlabs_http": "elevenlabs",
    "tts.elevenlabs_ws": "elevenlabs",
    "tts.zvukogram": "zvukogram",
    "asr.yandex": "yandex_stt",
}
STAND_IN_ARGS: dict[str, dict[str, Any]] = {
    "yandexgpt": {"api_key": YANDEX_GPT_KEY, "folder_id": YANDEX_FOLDER},
    "yandex_stt": {"behavior": {"api_key": YANDEX_STT_KEY, "folder_id": YANDEX_FOLDER}},
}


async def bench_overhead(name: str, runs: int) -> tuple[list[float], list[float]]:
    kind = STAND_IN_OF[name]
    overhead: list[float] = []
    e2e: list[float] = []
    async with StandInProcess(kind, **STAND_IN_ARGS.get(kind, {})) as server:
        provider, open_stream = build_provider(name, server.urls)
        try:
            for i in range(WARMUP + runs):
                await server.first_bytes()  # forget anything stamped before this run
                started = time.monotonic()
                got = await first_chunk(open_stream(provider))
                sent = await server.first_bytes()
                if not sent:
                    raise RuntimeError(f"{name}: the stand-in stamped no first byte")
                if i >= WARMUP:
                    overhead.append((got - sent[0]) * 1000)
                    e2e.append((got - started) * 1000)
        finally:
            await provider.aclose()
    return overhead, e2e


# ---- (ii) failover ------------------------------------------------------------------------------------


def write_robot(robots: Path, name: str, config: dict[str, Any], env: dict[str, str]) -> None:
    folder = robots / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "prompt.txt").write_text("Ты вежливый помощник.", encoding="utf-8")
    (folder / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()), encoding="utf-8")


async def timed_runs(runs: int, one: Callable[[str], Awaitable[float]]) -> list[float]:
    return [await one(f"c{i}") for i in range(runs)]


async def bench_tts_failover(runs: int, deadline_s: float) -> dict[str, list[float]]:
    from tests.stand_ins.elevenlabs_server import VALID_KEY
    from tests.tts.helpers import CallOutput, sentence
    from voiceplatform import subjects
    from voiceplatform.bus.memory import MemoryBroker
    from vp_tts.app import TtsService
    from vp_tts.settings import TtsSettings

    results: dict[str, list[float]] = {}
    async with (
        StandInProcess("elevenlabs") as healthy,
        StandInProcess("elevenlabs", behavior={"stall_after": 0}) as stalled,
    ):
        with tempfile.TemporaryDirectory() as tmp:
            robots = Path(tmp)
            for robot_name, server in (("healthy", healthy), ("stalled", stalled)):
                opts = {"base_url": server.urls["base_url"], "stall_timeout_s": 30.0}
                tts = {
                    "provider": "elevenlabs",
                    "voice": "21m00Tcm4TlvDq8ikWAM",
                    "fallback": ["espeak"],
                    "first_audio_timeout_s": deadline_s,
                    "providers": {"elevenlabs": opts},
                }
                write_robot(
                    robots,
                    robot_name,
                    {"llm": {"provider": "openai"}, "tts": tts},
                    {"TTS_API_KEY": VALID_KEY},
                )
            broker = MemoryBroker()
            service = TtsService(TtsSettings(robots_dir=robots, festival_procs=1))
            await service.start(broker.bus("tts"))
            client = broker.bus("llm")
            try:
                for robot_name in ("healthy", "stalled"):

                    async def one(call_id: str, robot_name: str = robot_name) -> float:
                        out = await CallOutput.on(client, call_id)
                        msg = sentence(call_id, "t1", 0, "Добрый день.", robot_name)
                        started = time.monotonic()
                        await client.publish(subjects.llm_sentence(call_id), msg)
                        await out.wait_until(lambda: bool(out.audio), 10.0)
                        first = (out.audio[0][0] - started) * 1000
                        await out.wait_closed(0)
                        expected = "elevenlabs" if robot_name == "healthy" else "espeak"
                        if out.audio[0][1].provider != expected:
                            raise RuntimeError(f"tts {robot_name}: audio from {out.audio[0][1].provider}")
                        return first

                    await one(f"warm-{robot_name}")
                    results[f"tts elevenlabs {robot_name}"] = await timed_runs(runs, one)
            finally:
                await service.drain(2.0)
    return results


async def bench_llm_failover(runs: int, deadline_s: float) -> dict[str, list[float]]:
    from tests.llm.helpers import Collector
    from voiceplatform import subjects
    from voiceplatform.bus.memory import MemoryBroker
    from voiceplatform.wire import LlmRequest, LlmSentence
    from vp_llm.app import LlmService
    from vp_llm.settings import LlmSettings

    results: dict[str, list[float]] = {}
    gpt_args = STAND_IN_ARGS["yandexgpt"]
    async with (
        StandInProcess("openai", behavior={"reply": "Хорошо."}) as openai,
        StandInProcess("yandexgpt", behavior={"stall_after": 0}, **gpt_args) as yandex,
    ):
        with tempfile.TemporaryDirectory() as tmp:
            robots = Path(tmp)
            env = {"OPENAI_API_KEY": OPENAI_KEY, "YANDEX_API_KEY": YANDEX_GPT_KEY}
            common = {
                "base_url": openai.urls["base_url"],
                "timeout_s": 10,
                "first_token_timeout_s": deadline_s,
                "providers": {"yandex": {"base_url": yandex.urls["base_url"], "folder_id": YANDEX_FOLDER}},
            }
            write_robot(robots, "healthy", {"llm": {"provider": "openai", **common}}, env)
            stalled = {"llm": {"provider": "yandex", "fallback": ["openai"], **common}}
            write_robot(robots, "stalled", stalled, env)
            broker = MemoryBroker()
            service = LlmService(LlmSettings(), robots=RobotRegistry(robots))
            await service.start(broker.bus("llm"))
            router = broker.bus("router")
            out = await Collector.on(broker.bus("watch"), subjects.ALL_CALLS)
            try:
                for robot_name in ("healthy", "stalled"):

                    async def one(call_id: str, robot_name: str = robot_name) -> float:
                        call_id = f"{robot_name}-{call_id}"
                        req = LlmRequest(
                            call_id=call_id,
                            turn_id="t1",
                            robot=robot_name,
                            prompt_id="default",
                            system_prompt="Будь краток.",
                            history=[],
                            user_text="Привет",
                            sample_rate=8000,
                        )
                        started = time.monotonic()
                        await router.publish(subjects.llm_request(call_id), req)
                        (first,) = await out.wait(LlmSentence, call_id=call_id, timeout_s=10.0)
                        if first.text != "Хорошо.":
                            raise RuntimeError(f"llm {robot_name}: unexpected sentence {first.text!r}")
                        return (out.first_time(LlmSentence, call_id=call_id) - started) * 1000

                    await one("warm")
                    name = "llm openai" if robot_name == "healthy" else "llm yandexgpt stalled → openai"
                    results[name] = await timed_runs(runs, one)
            finally:
                await service.drain(2.0)
    return results


async def main(args: argparse.Namespace) -> None:
    print(f"(i) client overhead: first body byte sent by the stand-in → first chunk out ({args.runs} runs)")
    for name in args.providers:
        overhead, e2e = await bench_overhead(name, args.runs)
        print(f"  {name:22s} overhead {summary(overhead)}   e2e {summary(e2e)}")
    print(f"(ii) failover, deadline {args.deadline} s ({args.failover_runs} runs): input → first output")
    for results in (
        await bench_tts_failover(args.failover_runs, args.deadline),
        await bench_llm_failover(args.failover_runs, args.deadline),
    ):
        for name, values in results.items():
            print(f"  {name:34s} {summary(values)}")
    # the in-memory bus's subscriptions outlive the services: stop them quietly
    leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--failover-runs", type=int, default=10)
    parser.add_argument("--deadline", type=float, default=0.5, help="first audio / first token deadline, s")
    parser.add_argument("--providers", nargs="+", default=list(STAND_IN_OF), choices=list(STAND_IN_OF))
    return parser.parse_args()


if __name__ == "__main__":
    from voiceplatform.logging import configure_logging

    configure_logging("bench-providers", "ERROR", json=False)  # failover warnings are expected here
    # MemoryBus subscription tasks the services never unsubscribe get collected as "destroyed pending"
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    mp.set_start_method("spawn")
    asyncio.run(main(parse_args()))
