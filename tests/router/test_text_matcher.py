"""Inflection-tolerant keyword matching (voiceplatform.text), shared by router and script engine."""

from __future__ import annotations

import pytest

from voiceplatform.text import Keyword, KeywordMatcher, matches_any, normalize, stem, tokenize


def test_normalize_and_tokenize() -> None:
    assert normalize("ЁЖИК Ещё") == "ежик еще"
    assert tokenize("Денег, у меня — НЕТ!") == ["денег", "у", "меня", "нет"]
    assert tokenize("3.5 руб.") == ["3", "5", "руб"]


def test_stem_keeps_at_least_four_letters() -> None:
    assert stem("собака") == "соба"
    assert stem("заработать") == "заработа"
    assert stem("дети") == "дети"
    assert stem("нет") == "нет"


@pytest.mark.parametrize(
    ("keyword", "text"),
    [
        ("собака", "У меня есть собака"),
        ("собака", "Я завёл собаку"),
        ("собака", "две собаки"),
        ("собака", "с собакой гуляю"),
        ("нет денег", "денег у меня нет"),
        ("денег нет", "Нет денег совсем"),
        ("заработать", "хочу заработаю побольше"),
        ("ребенок", "мой ребёнок ходит в школу"),
        ("щенок", "Щенок!"),
        ("питомец", "у нас два питомца"),
    ],
)
def test_inflected_forms_match(keyword: str, text: str) -> None:
    assert Keyword.parse(keyword).matches(tokenize(text))


@pytest.mark.parametrize(
    ("keyword", "text"),
    [
        ("собака", "у меня есть кошка"),
        ("нет денег", "денег хватает"),  # every word of the phrase must be present
        ("дети", "дедушка"),
        ("собака", ""),
    ],
)
def test_other_words_do_not_match(keyword: str, text: str) -> None:
    assert not Keyword.parse(keyword).matches(tokenize(text))


def test_matcher_returns_first_rule_and_phrase() -> None:
    m: KeywordMatcher[str] = KeywordMatcher()
    m.add("pets", ["собака", "кошка"])
    m.add("earning", ["нет денег"])
    assert m.match("Собаку кормить нечем, денег нет") == ("pets", "собака")
    assert m.match("денег у меня нет") == ("earning", "нет денег")
    assert m.match("просто поговорить") is None
    assert matches_any("Кошки спят", ["собака", "кошка"]) == "кошка"


def test_keyword_without_letters_is_rejected() -> None:
    with pytest.raises(ValueError):
        Keyword.parse("  ,. ")
