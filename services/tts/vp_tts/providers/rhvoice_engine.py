"""ctypes binding of RHVoice 1.8 (``libRHVoice.so.5``) and the one engine a process holds.

The structures mirror RHVoice 1.8's public header (RHVoice.h, RHVoice_common.h from the
``librhvoice-dev`` package); the field order and types must match it exactly. The library calls
``play_speech`` from inside ``RHVoice_speak`` with 16-bit mono PCM (24 kHz for every Russian voice)
about every 100 ms of audio; returning 0 from it makes ``RHVoice_speak`` stop at once.

One engine and one worker thread per process: RHVoice's engine is not documented as safe for
concurrent messages, and at a real-time factor of ~0.02 one thread speaks for many calls. Chunks
go from the callback to the asking coroutine's asyncio queue as they are made (streaming), so the
first audio leaves before the sentence is finished. ctypes releases the GIL during the C call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import itertools
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from voiceplatform.providers import ProviderError, ProviderProtocolError

log = structlog.get_logger("vp_tts.rhvoice")

PROVIDER = "rhvoice"
_MESSAGE_TEXT = 0  # RHVoice_message_text
_GENDERS = {1: "male", 2: "female"}

_SetSampleRate = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_PlaySpeech = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_uint, ctypes.c_void_p)


class _Callbacks(ctypes.Structure):
    # unused optional callbacks must be NULL (the header says so)
    _fields_ = [
        ("set_sample_rate", _SetSampleRate),
        ("play_speech", _PlaySpeech),
        ("process_mark", ctypes.c_void_p),
        ("word_starts", ctypes.c_void_p),
        ("word_ends", ctypes.c_void_p),
        ("sentence_starts", ctypes.c_void_p),
        ("sentence_ends", ctypes.c_void_p),
        ("play_audio", ctypes.c_void_p),
        ("done", ctypes.c_void_p),
    ]


class _InitParams(ctypes.Structure):
    _fields_ = [
        ("data_path", ctypes.c_char_p),
        ("config_path", ctypes.c_char_p),
        ("resource_paths", ctypes.POINTER(ctypes.c_char_p)),
        ("callbacks", _Callbacks),
        ("options", ctypes.c_uint),
    ]


class _SynthParams(ctypes.Structure):
    _fields_ = [
        ("voice_profile", ctypes.c_char_p),
        ("absolute_rate", ctypes.c_double),
        ("absolute_pitch", ctypes.c_double),
        ("absolute_volume", ctypes.c_double),
        ("relative_rate", ctypes.c_double),
        ("relative_pitch", ctypes.c_double),
        ("relative_volume", ctypes.c_double),
        ("punctuation_mode", ctypes.c_int),
        ("punctuation_list", ctypes.c_char_p),
        ("capitals_mode", ctypes.c_int),
        ("flags", ctypes.c_int),
    ]


class _VoiceInfo(ctypes.Structure):
    _fields_ = [
        ("language", ctypes.c_char_p),
        ("name", ctypes.c_char_p),
        ("gender", ctypes.c_int),
        ("country", ctypes.c_char_p),
    ]


class RhvoiceUnavailable(ProviderError):
    """The library or its data is not installed here: the chain falls through to the next voice."""

    kind = "unavailable"

    def __init__(self, reason: str) -> None:
        super().__init__(PROVIDER, reason, retryable=False)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VoiceInfo:
    name: str
    language: str
    gender: str


@dataclass(frozen=True, slots=True)
class Prosody:
    """RHVoice's absolute rate, pitch and volume, each in [-1, 1] (0: the voice's own)."""

    rate: float = 0.0
    pitch: float = 0.0
    volume: float = 0.0


@dataclass
class _Job:
    text: bytes
    voice: bytes
    prosody: Prosody
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[tuple[int, bytes] | BaseException | None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    rate: int = 0
    chunks: int = 0

    def put(self, item: tuple[int, bytes] | BaseException | None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the asking loop is gone: nobody listens any more
            self.cancelled.set()


def _bind(library: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(library)
    lib.RHVoice_get_version.restype = ctypes.c_char_p
    lib.RHVoice_get_version.argtypes = []
    lib.RHVoice_new_tts_engine.restype = ctypes.c_void_p
    lib.RHVoice_new_tts_engine.argtypes = [ctypes.POINTER(_InitParams)]
    lib.RHVoice_delete_tts_engine.restype = None
    lib.RHVoice_delete_tts_engine.argtypes = [ctypes.c_void_p]
    lib.RHVoice_get_number_of_voices.restype = ctypes.c_uint
    lib.RHVoice_get_number_of_voices.argtypes = [ctypes.c_void_p]
    lib.RHVoice_get_voices.restype = ctypes.POINTER(_VoiceInfo)
    lib.RHVoice_get_voices.argtypes = [ctypes.c_void_p]
    lib.RHVoice_new_message.restype = ctypes.c_void_p
    lib.RHVoice_new_message.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.POINTER(_SynthParams),
        ctypes.c_void_p,
    ]
    lib.RHVoice_delete_message.restype = None
    lib.RHVoice_delete_message.argtypes = [ctypes.c_void_p]
    lib.RHVoice_speak.restype = ctypes.c_int
    lib.RHVoice_speak.argtypes = [ctypes.c_void_p]
    return lib


class RhvoiceEngine:
    """The process's RHVoice engine; ``synthesize`` streams one message's PCM chunks."""

    def __init__(self, library: str, data_path: str, config_path: str) -> None:
        if not Path(data_path, "voices").is_dir():
            raise RhvoiceUnavailable(f"no RHVoice voice data in {data_path} (scripts/install-rhvoice.sh)")
        try:
            self._lib = _bind(library)
        except (OSError, AttributeError) as exc:
            raise RhvoiceUnavailable(
                f"cannot load {library} ({type(exc).__name__}): install it with scripts/install-rhvoice.sh"
            ) from None
        self.version = (self._lib.RHVoice_get_version() or b"").decode()
        self._jobs: dict[int, _Job] = {}
        self._ids = itertools.count(1)
        # the C side keeps pointers to these: they must live as long as the engine
        self._on_rate = _SetSampleRate(self._set_sample_rate)
        self._on_speech = _PlaySpeech(self._play_speech)
        callbacks = _Callbacks(self._on_rate, self._on_speech, None, None, None, None, None, None, None)
        self._params = _InitParams(data_path.encode(), config_path.encode(), None, callbacks, 0)
        self._engine = self._lib.RHVoice_new_tts_engine(ctypes.byref(self._params))
        if not self._engine:
            raise RhvoiceUnavailable(f"RHVoice found no usable data in {data_path}")
        infos = self._lib.RHVoice_get_voices(self._engine)
        count = self._lib.RHVoice_get_number_of_voices(self._engine)
        self.voices = {
            v.name.decode().lower(): VoiceInfo(
                v.name.decode(), v.language.decode(), _GENDERS.get(v.gender, "")
            )
            for v in (infos[i] for i in range(count))
        }
        if not self.voices:
            raise RhvoiceUnavailable(f"RHVoice has no voices in {data_path}")
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rhvoice")
        self.messages = 0
        self.cancelled = 0
        self.chunks = 0  # play_speech calls that delivered audio, all messages
        log.info(
            "tts.rhvoice_loaded", version=self.version, voices=sorted(v.name for v in self.voices.values())
        )

    # ---- called by the library on the worker thread -------------------------------------------
    def _set_sample_rate(self, rate: int, user_data: int | None) -> int:
        job = self._jobs.get(user_data or 0)
        if job is not None:
            job.rate = rate
        return 1

    def _play_speech(
        self, samples: ctypes._Pointer[ctypes.c_short], count: int, user_data: int | None
    ) -> int:
        job = self._jobs.get(user_data or 0)
        if job is None or job.cancelled.is_set():
            return 0  # stop synthesis now
        job.chunks += 1
        self.chunks += 1
        job.put((job.rate, ctypes.string_at(samples, count * 2)))
        return 1

    # ---- worker thread ------------------------------------------------------------------------
    def _speak(self, job_id: int) -> None:
        job = self._jobs[job_id]
        try:
            if job.cancelled.is_set():
                return  # cancelled while queued behind another message
            p = job.prosody
            params = _SynthParams(job.voice, p.rate, p.pitch, p.volume, 1.0, 1.0, 1.0, 0, None, 0, 0)
            message = self._lib.RHVoice_new_message(
                self._engine, job.text, len(job.text), _MESSAGE_TEXT, ctypes.byref(params), job_id
            )
            if not message:
                job.put(ProviderProtocolError(PROVIDER, "RHVoice rejected the message"))
                return
            try:
                ok = self._lib.RHVoice_speak(message)
            finally:
                self._lib.RHVoice_delete_message(message)
            if not ok and not job.cancelled.is_set():
                job.put(ProviderProtocolError(PROVIDER, "RHVoice_speak failed"))
            elif not job.chunks and not job.cancelled.is_set():
                job.put(ProviderProtocolError(PROVIDER, "RHVoice made no audio for non-empty text"))
        except Exception as exc:  # never let a worker error leave the consumer waiting
            job.put(ProviderProtocolError(PROVIDER, f"RHVoice worker failed: {type(exc).__name__}"))
        finally:
            self._jobs.pop(job_id, None)
            job.put(None)

    # ---- asyncio side -------------------------------------------------------------------------
    async def synthesize(
        self, text: str, voice: str, prosody: Prosody
    ) -> AsyncGenerator[tuple[int, bytes], None]:
        """Yield ``(sample_rate, pcm)`` chunks as the engine makes them; closing stops it at once."""
        job = _Job(
            text.encode("utf-8"), voice.encode("utf-8"), prosody, asyncio.get_running_loop(), asyncio.Queue()
        )
        job_id = next(self._ids)
        self._jobs[job_id] = job
        self.messages += 1
        try:
            self._worker.submit(self._speak, job_id)
        except RuntimeError:  # shut down
            self._jobs.pop(job_id, None)
            raise RhvoiceUnavailable("the RHVoice engine is closed") from None
        finished = False
        try:
            while True:
                item = await job.queue.get()
                if item is None:
                    finished = True
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not finished:
                # the next play_speech returns 0 and RHVoice_speak unwinds; nobody waits for it
                job.cancelled.set()
                self.cancelled += 1

    async def idle(self) -> None:
        """Return once every message submitted before this call has left the worker."""
        await asyncio.wrap_future(self._worker.submit(lambda: None))

    async def warm(self, voice: str) -> float:
        """Speak a word with ``voice`` (loads its data, ~0.1-0.2 s once); returns seconds."""
        started = time.monotonic()
        async for _ in self.synthesize("Алло.", voice, Prosody()):
            pass
        return time.monotonic() - started


# one engine per process, for its whole life: providers come and go (tests, reloads), the engine and
# its worker thread stay, so no late callback can ever reach a freed engine
_shared_lock = threading.Lock()
_shared: dict[tuple[str, str, str], RhvoiceEngine | RhvoiceUnavailable] = {}


def shared_engine(library: str, data_path: str, config_path: str) -> RhvoiceEngine:
    """The process's engine for these paths (built once; a failure is remembered and re-raised)."""
    key = (library, data_path, config_path)
    with _shared_lock:
        found = _shared.get(key)
        if found is None:
            try:
                found = RhvoiceEngine(library, data_path, config_path)
            except RhvoiceUnavailable as exc:
                log.warning("tts.rhvoice_unavailable", reason=exc.reason)
                found = exc
            _shared[key] = found
    if isinstance(found, RhvoiceUnavailable):
        raise RhvoiceUnavailable(found.reason)
    return found
