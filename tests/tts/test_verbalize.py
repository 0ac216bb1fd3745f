"""Numbers, prices, dates and abbreviations in words for the local voices (vp_tts.verbalize)."""

from __future__ import annotations

import random

import pytest

from vp_tts.providers.festival_text import festival_safe_text
from vp_tts.verbalize import verbalize


@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        ("Цена 500 ₽.", "Цена пятьсот рублей."),
        ("Это стоит 1 200 рублей.", "Это стоит одна тысяча двести рублей."),
        ("Итого 1\u00a0299,90 ₽", "Итого одна тысяча двести девяносто девять рублей девяносто копеек"),
        ("Оплата 1200 руб. и 50 коп.", "Оплата одна тысяча двести рублей и пятьдесят копеек."),
        (
            "1 руб., 2 руб., 11 руб., 21 руб.",
            "один рубль, два рубля, одиннадцать рублей, двадцать один рубль.",
        ),
        ("$100 и 50 €", "сто долларов и пятьдесят евро"),
        ("Стоимость 2 500 000 рублей", "Стоимость два миллиона пятьсот тысяч рублей"),
        ("Скидка 10%.", "Скидка десять процентов."),
        ("Скидка 21% и 3,5 %", "Скидка двадцать один процент и три целых пять десятых процента"),
        ("Встреча 06.12.2026.", "Встреча шестое декабря две тысячи двадцать шестого года."),
        (
            "Запись на 5.01.26 г. в 9:05",
            "Запись на пятое января две тысячи двадцать шестого года в девять ноль пять",
        ),
        ("Начало в 10:30, конец в 18:00.", "Начало в десять тридцать, конец в восемнадцать ноль ноль."),
        ("В 2026 году", "В две тысячи двадцать шестом году"),
        ("Приедем 6 декабря или 31 мая", "Приедем шестое декабря или тридцать первое мая"),
        ("Вес 3,5 кг", "Вес три целых пять десятых килограммов"),
        ("Температура -5 градусов", "Температура минус пять градусов"),
        ("т.е. завтра, т. д.", "то есть завтра, так далее"),
        ("Ул. Ленина, д. 5, кв. 12", "улица Ленина, дом пять, квартира двенадцать"),
        ("Номер 007", "Номер ноль ноль семь"),
        # phone numbers are digit groups, not one number
        ("8 800 555 35 35", "восемь восемьсот пятьсот пятьдесят пять тридцать пять тридцать пять"),
        ("Без чисел. «Ромашка» — лучшая!", "Без чисел. «Ромашка» — лучшая!"),
    ],
)
def test_verbalize(raw: str, spoken: str) -> None:
    assert verbalize(raw) == spoken


def test_no_digit_is_left_and_festival_keeps_every_word() -> None:
    text = "Заказ №15 на 1 200 ₽ (скидка 10%) привезём 06.12.2026 с 9:00 до 18:30, тел. 8 800 555 35 35."
    spoken = verbalize(text)
    assert not any(ch.isdigit() for ch in spoken)
    # nothing festival's letter-to-sound rules choke on is left, and no word is lost on the way
    assert len(festival_safe_text(spoken).split()) >= len(spoken.split()) - 2


def test_any_mix_of_digits_and_symbols_becomes_words_without_error() -> None:
    rng = random.Random(7)
    alphabet = "0123456789 .,:%₽$€-рубкоп.г"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
        assert not any(ch.isdigit() for ch in verbalize(text)), text
    assert verbalize("1" * 40).split() == ["один"] * 40  # too long for a value: digit by digit
