"""Number words → digits: the brain hears "пятьсот рублей" and "500 рублей" the same."""

from __future__ import annotations

import pytest

from voiceplatform.numerals import words_to_digits
from voiceplatform.text import Keyword, tokenize


@pytest.mark.parametrize(
    ("spoken", "written"),
    [
        ("пятьсот рублей", "500 рублей"),
        ("от двухсот рублей", "от 200 рублей"),
        ("три тысячи рублей", "3000 рублей"),
        ("сто двадцать три", "123"),
        ("номер заказа сорок два", "номер заказа 42"),
    ],
)
def test_cardinal_words_become_digits(spoken: str, written: str) -> None:
    assert words_to_digits(spoken) == written
    assert tokenize(words_to_digits(spoken)) == tokenize(written)


def test_text_without_numbers_and_digits_stay() -> None:
    assert words_to_digits("Сколько стоит доставка?") == "Сколько стоит доставка?"
    assert words_to_digits("а за 500 рублей") == "а за 500 рублей"
    assert words_to_digits("") == ""


def test_unsupported_language_passes_through() -> None:
    assert words_to_digits("пятьсот рублей", "de-DE") == "пятьсот рублей"
    assert words_to_digits("пятьсот рублей", "ru-RU") == "500 рублей"


def test_keywords_with_number_words_match_digits() -> None:
    kw = Keyword.parse(words_to_digits("пятьсот рублей"))
    assert kw.matches(tokenize(words_to_digits("а вот 500 рублей")))
    assert kw.matches(tokenize(words_to_digits("а вот пятьсот рублей")))
