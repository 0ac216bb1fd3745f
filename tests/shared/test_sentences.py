"""Streaming sentence splitter: same sentences whatever the chunking, Russian abbreviations intact."""

from __future__ import annotations

import random

import pytest

from voiceplatform.sentences import SentenceSplitter, split_text

TEXTS = [
    "Здравствуйте! Чем могу помочь? Мы работаем с девяти до шести.",
    "Это стоит 3.5 тыс. руб. за штуку, т.е. недорого. Скидки, бонусы и т.д. Звоните!",
    "А. С. Пушкин родился в 1799 г. в Москве. Ура... а потом… Да!",
    "Он сказал: «Приходите завтра.» Мы придём. Точно?! Конечно.",
    "Version 2.0 is out. Visit example.com today. Dr. Smith agrees.",
    (
        "Мы продаём корма для собак, игрушки для кошек, лежанки, переноски, ошейники, поводки, "
        "витамины и средства ухода, а ещё аквариумы, клетки для птиц и многое другое, что может "
        "понадобиться вашему питомцу в повседневной жизни. Приходите."
    ),
    "слово " * 80 + "конец.",
    "Одно предложение без точки в конце",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_any_chunking_gives_the_same_sentences(text: str) -> None:
    expected = split_text(text)
    rng = random.Random(len(text))
    for _ in range(40):
        splitter = SentenceSplitter()
        got: list[str] = []
        i = 0
        while i < len(text):
            step = rng.choice([1, 1, 2, 3, 5, 8, 13, 40])
            got += splitter.feed(text[i : i + step])
            i += step
        got += splitter.flush()
        assert got == expected
    assert " ".join(expected).split() == text.split()  # nothing lost, nothing invented


def test_basic_boundaries() -> None:
    assert split_text("Привет. Как дела? Хорошо!") == ["Привет.", "Как дела?", "Хорошо!"]


def test_abbreviations_numbers_and_initials_stay_together() -> None:
    assert split_text("Цена 3.5 руб. за шт., т.е. дёшево. Приходите!") == [
        "Цена 3.5 руб. за шт., т.е. дёшево.",
        "Приходите!",
    ]
    assert split_text("А. С. Пушкин родился в 1799 г. в Москве. Правда.") == [
        "А. С. Пушкин родился в 1799 г. в Москве.",
        "Правда.",
    ]
    # "т.д." ends a sentence when a capital follows, not otherwise
    assert split_text("Корма, игрушки и т.д. Что вам нужно?") == ["Корма, игрушки и т.д.", "Что вам нужно?"]
    assert split_text("Корма и т.д. и т.п. всё есть.") == ["Корма и т.д. и т.п. всё есть."]


def test_ellipsis_and_quotes() -> None:
    assert split_text("Ну… не знаю. «Правда?» Да.") == ["Ну… не знаю.", "«Правда?»", "Да."]
    assert split_text("Подождите... Сейчас!") == ["Подождите...", "Сейчас!"]


def test_sentence_is_released_as_soon_as_the_next_one_starts() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("Привет.") == []
    assert splitter.feed(" ") == []  # could still be "Привет. т.е." — wait for the next word
    assert splitter.feed("Как") == ["Привет."]
    assert splitter.feed(" дела?") == []
    assert splitter.flush() == ["Как дела?"]  # the last sentence always comes from flush()
    assert splitter.flush() == []


def test_long_clause_is_cut_at_a_comma() -> None:
    clause = "очень длинное перечисление всего подряд без точки " * 3  # 150 chars
    text = clause.strip() + ", и потом продолжение. Конец."
    sentences = split_text(text, clause_chars=120)
    assert sentences[0].endswith(",")
    assert len(sentences[0]) >= 120
    assert sentences[1:] == ["и потом продолжение.", "Конец."]
    # short clauses are not cut
    assert split_text("Один, два, три.") == ["Один, два, три."]


def test_text_without_punctuation_is_cut_at_a_space() -> None:
    text = "слово " * 100
    sentences = split_text(text, max_chars=300)
    assert all(len(s) <= 300 for s in sentences)
    assert len(sentences) == 2
