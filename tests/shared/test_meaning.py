"""The sentence encoder from the installed package, and nearest-example matching."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from voiceplatform import meaning
from voiceplatform.meaning import EncoderUnavailable, ExampleIndex, Vectors

PETS = ["у меня собака", "у нас кошка", "домашние животные", "щенок", "котёнок"]
MONEY = ["денег не хватает", "ищу работу", "хочу подработку", "нужны деньги", "зарплата маленькая"]


@pytest.fixture
def real_encoder() -> Iterator[None]:
    meaning.set_encoder(None)  # the real one, loaded from the installed package
    yield


@pytest.mark.slow
def test_encoder_loads_and_embeds_meaning(real_encoder: None) -> None:
    vectors = meaning.encode([meaning.prepare(t) for t in ["у меня щенок", "пёсик", "какая завтра погода"]])
    assert vectors.shape == (3, 512)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


@pytest.mark.slow
async def test_example_index_finds_the_label_by_meaning(real_encoder: None) -> None:
    index: ExampleIndex[str] = ExampleIndex([("pets", p) for p in PETS] + [("money", m) for m in MONEY])
    assert not index.built
    await index.ready(60)
    pets = await index.anearest("у меня пёсик породистый")
    money = await index.anearest("совсем без денег сижу")
    off = await index.anearest("какая завтра погода в москве")
    assert index.built
    assert pets is not None and pets.label == "pets" and pets.score > 0.55
    assert money is not None and money.label == "money" and money.score > 0.55
    assert off is not None and off.score < 0.55
    only_money = await index.anearest("у меня пёсик породистый", allowed={"money"})
    assert only_money is not None and only_money.label == "money"
    scores = await index.ascores("щенок")
    assert set(scores) == {"pets", "money"} and scores["pets"].score > scores["money"].score


def test_prepare_folds_case_punctuation_yo_and_numbers() -> None:
    assert meaning.prepare("Пёсик, за ПЯТЬСОТ рублей!") == "песик за 500 рублей"


class ThreadRecorder:
    def __init__(self) -> None:
        self.threads: set[int] = set()

    def encode(self, texts: Sequence[str]) -> Vectors:
        self.threads.add(threading.get_ident())
        out = np.zeros((len(texts), 4), dtype=np.float32)
        for i, t in enumerate(texts):
            out[i, hash(t) % 4] = 1.0
        return out


async def test_encoding_runs_off_the_event_loop_thread() -> None:
    recorder = ThreadRecorder()
    meaning.set_encoder(recorder)
    try:
        index: ExampleIndex[str] = ExampleIndex([("a", "один пример"), ("b", "другой пример")])
        await asyncio.gather(index.anearest("пример"), meaning.encode_async(["ещё"]))
    finally:
        meaning.set_encoder(None)
    assert recorder.threads and threading.get_ident() not in recorder.threads


class Broken:
    def encode(self, texts: Sequence[str]) -> Vectors:
        raise RuntimeError("boom")


async def test_a_failing_encoder_raises_encoder_unavailable() -> None:
    meaning.set_encoder(Broken())
    try:
        index: ExampleIndex[str] = ExampleIndex([("a", "пример")])
        with pytest.raises(EncoderUnavailable):
            await index.anearest("пример")
    finally:
        meaning.set_encoder(None)


class CountingEncoder(ThreadRecorder):
    def __init__(self) -> None:
        super().__init__()
        self.encoded: list[str] = []

    def encode(self, texts: Sequence[str]) -> Vectors:
        self.encoded += texts
        return super().encode(texts)


async def test_a_phrase_said_again_is_not_encoded_again_until_the_encoder_changes() -> None:
    first = CountingEncoder()
    meaning.set_encoder(first)
    try:
        index: ExampleIndex[str] = ExampleIndex([("a", "один пример"), ("b", "другой пример")])
        await index.ready()
        said = [await index.anearest("Да, пример!") for _ in range(3)]
        assert first.encoded.count("да пример") == 1  # the examples, then the phrase once
        assert first.threads and threading.get_ident() not in first.threads  # never on the loop
        assert len({m.label for m in said if m is not None}) <= 1
        vector = index.vector_of("Да, пример!")
        with pytest.raises(ValueError):
            vector[0] = 5.0  # shared by every caller of the phrase: nobody may change it
        second = CountingEncoder()
        meaning.set_encoder(second)
        index.vector_of("Да, пример!")
        assert second.encoded == ["да пример"]  # another encoder: its own vectors
    finally:
        meaning.set_encoder(None)
