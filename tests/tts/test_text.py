"""Text normalization (markdown, emoji) and Festival-safe text."""

from __future__ import annotations

import pytest

from vp_tts.providers.festival_text import festival_safe_text, scheme_string
from vp_tts.text import normalize_text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("**Конечно!** Мы _работаем_ с 9 до 18.", "Конечно! Мы работаем с 9 до 18."),
        ("# Итоги\n- первый пункт\n- второй пункт", "Итоги первый пункт второй пункт"),
        ("Смотрите [наш сайт](https://example.ru) 😀👍", "Смотрите наш сайт"),
        ("Код `abc` и ```python\nprint()\n```", "Код abc и print()"),
        ("«Ромашка» — лучшая… правда?", "«Ромашка» — лучшая… правда?"),
        ("Флаг 🇷🇺 и сердце ❤️ тут", "Флаг и сердце тут"),
        ("  \n\t ", ""),
        ("Нулевой\u200bширины\u0007", "Нулевойширины"),
    ],
)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Привет, как дела?", "Привет, как дела?"),
        ("Скидка 50% до 10:30", "Скидка 50 процентов до 10 30"),
        ("ООО «Ромашка» — лучшая…", "ООО Ромашка, лучшая."),
        ("Цена $100, т.е. дорого!!!", "Цена 100 долларов, т е. дорого!"),
        ('Он сказал "да" \\ (тест)', "Он сказал да тест"),
        ("кто-то пришёл на 15-й этаж", "кто-то пришёл на 15-й этаж"),
        ("звоните +7 900 123-45-67", "звоните +7 900 123-45-67"),
        ("café Straße", "cafe Strasse"),
        ("слово - слово", "слово, слово"),
        ("... !!! ???", ""),
    ],
)
def test_festival_safe_text(raw: str, expected: str) -> None:
    assert festival_safe_text(raw) == expected


def test_scheme_string_escapes_quotes_backslashes_and_newlines() -> None:
    assert scheme_string('a "b" \\c\nd') == '"a \\"b\\" \\\\c d"'
