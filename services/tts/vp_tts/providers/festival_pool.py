"""Long-lived Festival processes: the voice loads once (~0.5 s), then an utterance takes ~40 ms.

Each process runs ``festival --pipe`` and reads Scheme from stdin. One utterance is two lines:
``(utt.save.wave (utt.synth (Utterance Text "…")) "<tmp>.wav" 'riff)`` and ``(print "<marker>")
(fflush nil)``. Festival evaluates them in order, so the marker line proves the wave is written (or
that synthesis failed: then the file is missing and the lines before the marker say why). Markers are
unique, so a reader skips the output of an utterance whose caller was cancelled mid-way.

A process that died, hung (no marker within the timeout) or cannot be written to is killed and
started again; a pool of them is shared through an asyncio queue so concurrent sentences never
interleave on one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import structlog

from voiceplatform.audio import Int16Array, read_wav
from voiceplatform.providers import ProviderConnectionError, ProviderProtocolError, ProviderTimeoutError

from .festival_text import scheme_string

log = structlog.get_logger("vp_tts.festival")

PROVIDER = "festival"
_VOICE_NAME = re.compile(r"^[a-z0-9_]{1,64}$")
_READ_LIMIT = 1 << 20
# after a failed start, callers fail fast for this long instead of each paying for another start
_RESTART_BACKOFF_S = 2.0


class _ProcessGone(Exception):
    """The process exited or closed its pipes before answering: safe to retry on a fresh one."""


def _tmp_root() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None  # RAM-backed where it exists


class FestivalProcess:
    """One ``festival --pipe`` child; used by one caller at a time (the pool sees to that)."""

    def __init__(self, index: int, default_voice: str, startup_timeout_s: float) -> None:
        self.index = index
        self.default_voice = default_voice
        self.startup_timeout_s = startup_timeout_s
        self.voices: list[str] = []
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._current_voice = ""
        self._markers = itertools.count(1)
        self._tmp: Path | None = None
        self._stale: list[Path] = []
        self._failed_at = 0.0
        self.started = False

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        if time.monotonic() - self._failed_at < _RESTART_BACKOFF_S:
            raise ProviderConnectionError(PROVIDER, "festival failed to start moments ago")
        await self.stop()
        started = time.monotonic()
        self._tmp = Path(tempfile.mkdtemp(prefix="vp-festival-", dir=_tmp_root()))
        try:
            self._proc = await asyncio.create_subprocess_exec(
                "festival",
                "--pipe",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                limit=_READ_LIMIT,
                start_new_session=True,  # a terminal's Ctrl-C reaches the service, which stops us
            )
            self._current_voice = self.default_voice
            marker = self._marker()
            lines = await asyncio.wait_for(
                self._command(f"({self.default_voice})\n(print (voice.list))\n", marker),
                self.startup_timeout_s,
            )
        except (OSError, _ProcessGone, TimeoutError) as exc:
            self._failed_at = time.monotonic()
            await self.stop()
            raise ProviderConnectionError(PROVIDER, f"festival did not start: {type(exc).__name__}") from exc
        self.started = True
        self.voices = _parse_voice_list(lines)
        if any("error" in line.lower() for line in lines):
            self._failed_at = time.monotonic()
            await self.stop()
            raise ProviderConnectionError(PROVIDER, f"festival could not load {self.default_voice}")
        log.info(
            "festival.started",
            proc=self.index,
            pid=self.pid,
            voices=self.voices,
            ms=round((time.monotonic() - started) * 1000),
        )

    async def restart(self, reason: str) -> None:
        self.restarts += 1
        log.warning("festival.restarting", proc=self.index, reason=reason, restarts=self.restarts)
        await self.start()

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        if proc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 2.0)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self._stale.clear()

    def kill(self) -> None:
        """Kill without waiting (a hung utterance); the next ``acquire`` starts a new process."""
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    def resolve_voice(self, voice: str) -> str:
        """A robot's voice name (``msu_ru_nsh``, ``voice_msu_ru_nsh_clunits``) → a loaded voice function."""
        name = voice.strip().lower().removeprefix("voice_")
        if not name or not _VOICE_NAME.match(name):
            return self.default_voice
        for candidate in (name, f"{name}_clunits", f"{name}_diphone", f"{name}_hts", f"{name}_cg"):
            if candidate in self.voices:
                return f"voice_{candidate}"
        return self.default_voice

    async def synthesize(self, text: str, voice: str, timeout_s: float) -> tuple[Int16Array, int]:
        """Synthesize festival-safe ``text``; raises ``_ProcessGone`` when the process is gone."""
        if self._proc is None or self._tmp is None:
            raise _ProcessGone("not started")
        marker = self._marker()
        wav_path = self._tmp / f"u{marker}.wav"
        script = ""
        voice_fn = self.resolve_voice(voice)
        if voice_fn != self._current_voice:
            script += f"({voice_fn})\n"
            self._current_voice = voice_fn
        script += f'(utt.save.wave (utt.synth (Utterance Text {scheme_string(text)})) "{wav_path}" \'riff)\n'
        try:
            lines = await asyncio.wait_for(self._command(script, marker), timeout_s)
        except TimeoutError:
            self.kill()
            raise ProviderTimeoutError(PROVIDER, f"no answer in {timeout_s:.1f} s") from None
        except asyncio.CancelledError:
            self._stale.append(wav_path)  # festival still writes it; removed after a later marker
            raise
        self._remove_stale()
        try:
            samples, rate = read_wav(wav_path.read_bytes())
        except FileNotFoundError:
            detail = " ".join(line.strip() for line in lines)[:200]
            raise ProviderProtocolError(
                PROVIDER, f"synthesis failed: {detail or 'no wave written'}"
            ) from None
        except (ValueError, EOFError) as exc:
            raise ProviderProtocolError(PROVIDER, f"unreadable wave: {exc}") from None
        finally:
            wav_path.unlink(missing_ok=True)
        return samples, rate

    def _marker(self) -> str:
        return f"VPM{self.index}x{next(self._markers)}"

    async def _command(self, script: str, marker: str) -> list[str]:
        """Send ``script`` plus a marker print; return the output lines before our marker."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise _ProcessGone("not started")
        try:
            proc.stdin.write(f'{script}(print "{marker}")(fflush nil)\n'.encode())
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _ProcessGone("stdin closed") from exc
        lines: list[str] = []
        wanted = f'"{marker}"'
        while True:
            try:
                raw = await proc.stdout.readline()
            except ValueError as exc:  # a line over the read limit: the output is not ours to parse
                self.kill()
                raise ProviderProtocolError(PROVIDER, "festival printed an oversized line") from exc
            if not raw:
                raise _ProcessGone("stdout closed")
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line == wanted:
                return lines
            if line.startswith('"VPM'):
                lines.clear()  # a cancelled earlier utterance's end: what came before was its output
            else:
                lines.append(line)

    def _remove_stale(self) -> None:
        for path in self._stale:
            path.unlink(missing_ok=True)
        self._stale.clear()


def _parse_voice_list(lines: list[str]) -> list[str]:
    """``(msu_ru_nsh_clunits kal_diphone)`` → names."""
    for line in lines:
        line = line.strip()
        if line.startswith("(") and line.endswith(")"):
            return [v for v in line[1:-1].split() if _VOICE_NAME.match(v)]
    return []


class FestivalPool:
    """N warm processes behind a FIFO queue: a sentence waits for a free process, never shares one."""

    def __init__(self, size: int, voice: str, timeout_s: float, startup_timeout_s: float) -> None:
        if not _VOICE_NAME.match(voice):
            raise ValueError(f"invalid festival voice function name {voice!r}")
        self.timeout_s = timeout_s
        self.processes = [FestivalProcess(i, voice, startup_timeout_s) for i in range(size)]
        self._idle: asyncio.Queue[FestivalProcess] = asyncio.Queue()
        for proc in self.processes:
            self._idle.put_nowait(proc)  # a process not started yet starts on first use
        self.warm = False

    async def start(self) -> None:
        """Start every process, voice loaded; raises ``ProviderConnectionError`` if none came up."""
        taken = [await self._idle.get() for _ in self.processes]
        try:
            results = await asyncio.gather(*(p.start() for p in taken), return_exceptions=True)
        finally:
            for proc in taken:
                self._idle.put_nowait(proc)
        errors = [r for r in results if isinstance(r, BaseException)]
        if len(errors) == len(self.processes):
            raise ProviderConnectionError(PROVIDER, f"no festival process started: {errors[0]}")
        self.warm = True

    async def stop(self) -> None:
        self.warm = False
        await asyncio.gather(*(p.stop() for p in self.processes))

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[FestivalProcess]:
        proc = await self._idle.get()
        try:
            if not proc.alive:
                await (proc.restart("dead") if proc.started else proc.start())
            yield proc
        finally:
            self._idle.put_nowait(proc)

    async def synthesize(self, text: str, voice: str) -> tuple[Int16Array, int]:
        async with self.acquire() as proc:
            try:
                return await proc.synthesize(text, voice, self.timeout_s)
            except _ProcessGone as exc:
                # died since its last utterance (killed, OOM): nothing was produced, so one retry
                await proc.restart(str(exc))
            try:
                return await proc.synthesize(text, voice, self.timeout_s)
            except _ProcessGone as exc:
                proc.kill()
                raise ProviderConnectionError(PROVIDER, f"festival process lost: {exc}") from None
