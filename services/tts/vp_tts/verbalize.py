"""Numbers, prices, dates, times and common abbreviations → Russian words, for the local voices.

Measured on the real engines (bench/bench_tts_local.py transcribes them): RHVoice reads "1 200" as
"один двести", drops "₽" and "$", reads "06.12.2026" digit group by digit group and "т.е." as
letters; Festival and espeak-ng do no better. So every local voice gets this text, where numbers are
already words (``num2words``, Russian). Cloud voices get the original text: they read numbers well.

Cases are approximated: a bare number is read in the nominative; a unit after a number (рубль,
процент, копейка, доллар) takes the plural form the number needs; dates read as "шестое декабря
две тысячи двадцать шестого года". Digit groups that are not a thousands-grouped number (phone
numbers "8 800 555 35 35") stay separate numbers, as people read them.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from num2words import num2words

_SPACE = "[ \u00a0\u202f\u2009]"  # space, no-break space, narrow no-break space, thin space
# 1 200 / 2 500 000: a 1-3 digit head and 3-digit groups, not part of a longer run of digit groups
_GROUPED = re.compile(rf"(?<![\d.,])(?<!\d{_SPACE})(\d{{1,3}}(?:{_SPACE}\d{{3}})+)(?!{_SPACE}?\d)")
_NUMBER = r"(\d+(?:[.,]\d+)?)"
_DATE = re.compile(r"(?<![\d.])(\d{1,2})\.(\d{1,2})\.(\d{4}|\d{2})(?![\d])(?:\s?г\.)?")
# "6 декабря": the day is a neuter ordinal ("шестое декабря")
_DAY_MONTH = re.compile(
    r"(?<![\d.,])([12]?\d|3[01])\s(января|февраля|марта|апреля|мая|июня|июля|августа|сентября|октября"
    r"|ноября|декабря)(?![а-яё])"
)
# "в 2026 году", "2026 года", "2026 год": the year is an ordinal in the case of the word after it
_YEAR = re.compile(r"(?<![\d.,])(\d{4})\s?(году|года|год)(?![а-яё])")
_YEAR_CASE = {"году": "prepositional", "года": "genitive", "год": "nominative"}
_TIME = re.compile(r"(?<![\d:])([01]?\d|2[0-3]):([0-5]\d)(?![\d:])")
_CURRENCY_BEFORE = re.compile(r"([$€₽])\s?" + _NUMBER)
_MONEY = re.compile(
    _NUMBER + r"\s?(₽|руб\.?(?![а-яё])|р\.(?!\w)|\$|€|коп\.?(?![а-яё])|"
    r"рубл(?:ь|я|ей|ям|ях)|копе(?:йка|йки|ек)|доллар(?:а|ов)?|евро)(?![а-яё])",
    re.IGNORECASE,
)
_PERCENT = re.compile(_NUMBER + r"\s?%")
_SIGNED = re.compile(r"(?<![\w\d])[-−](\d)")
_DECIMAL = re.compile(r"(?<![\d.,])(\d+)[.,](\d+)(?![.,]?\d)")
_INTEGER = re.compile(r"\d+")
_SPACES = re.compile(r"\s+")

_MONTHS = (
    *("января", "февраля", "марта", "апреля", "мая", "июня"),
    *("июля", "августа", "сентября", "октября", "ноября", "декабря"),
)
# forms for 1, for 2-4, for 5-20 (and 11-14)
_UNITS: dict[str, tuple[str, str, str, str]] = {
    # unit key: (one, few, many, gender of the count)
    "rub": ("рубль", "рубля", "рублей", "m"),
    "kop": ("копейка", "копейки", "копеек", "f"),
    "usd": ("доллар", "доллара", "долларов", "m"),
    "eur": ("евро", "евро", "евро", "m"),
    "pct": ("процент", "процента", "процентов", "m"),
}
# abbreviations read as words; "г." after a year is handled by the date rule
_ABBREVIATIONS = [
    (re.compile(r"(?<![а-яё])т\.\s?е\.", re.IGNORECASE), "то есть"),
    (re.compile(r"(?<![а-яё])т\.\s?д\.", re.IGNORECASE), "так далее"),
    (re.compile(r"(?<![а-яё])т\.\s?п\.", re.IGNORECASE), "тому подобное"),
    (re.compile(r"(?<![а-яё])т\.\s?к\.", re.IGNORECASE), "так как"),
    (re.compile(r"(?<![а-яё])тел\.", re.IGNORECASE), "телефон"),
    (re.compile(r"(?<![а-яё])ул\.", re.IGNORECASE), "улица"),
    (re.compile(r"(?<![а-яё])пр-т(?![а-яё])|(?<![а-яё])просп\.", re.IGNORECASE), "проспект"),
    (re.compile(r"(?<![а-яё])д\.(?=\s?\d)", re.IGNORECASE), "дом"),
    (re.compile(r"(?<![а-яё])кв\.(?=\s?\d)", re.IGNORECASE), "квартира"),
    (re.compile(r"(?<![а-яё])тыс\.?(?![а-яё])", re.IGNORECASE), "тысяч"),
    (re.compile(r"(?<![а-яё])млн\.?(?![а-яё])", re.IGNORECASE), "миллионов"),
    (re.compile(r"(?<![а-яё])млрд\.?(?![а-яё])", re.IGNORECASE), "миллиардов"),
    (re.compile(r"(?<=\d)\s?мин\.?(?![а-яё])", re.IGNORECASE), " минут"),
    (re.compile(r"(?<=\d)\s?кг(?![а-яё])", re.IGNORECASE), " килограммов"),
    (re.compile(r"(?<=\d)\s?км(?![а-яё])", re.IGNORECASE), " километров"),
]


def _form(number: str, unit: str) -> str:
    """The unit's word for this count: 1 рубль, 2 рубля, 5 рублей; fractions take the 2-4 form."""
    one, few, many, _ = _UNITS[unit]
    if "." in number or "," in number:
        return few
    n = int(number)
    if 11 <= n % 100 <= 14:
        return many
    if n % 10 == 1:
        return one
    if 2 <= n % 10 <= 4:
        return few
    return many


_DIGIT_WORDS = ["ноль", "один", "два", "три", "четыре", "пять", "шесть", "семь", "восемь", "девять"]
_MAX_DIGITS = 15  # longer runs are codes or account numbers: read digit by digit


def _digits(number: str) -> str:
    return " ".join(_DIGIT_WORDS[int(d)] for d in number if d.isdigit())


def _words(number: str, gender: str = "m") -> str:
    """ "1200" → "одна тысяча двести", "3,5" → "три целых пять десятых"."""
    number = number.replace(",", ".")
    if sum(ch.isdigit() for ch in number) > _MAX_DIGITS:
        return _digits(number)
    try:
        value = Decimal(number)
        if value == value.to_integral_value() and "." not in number:
            if len(number) > 1 and number.startswith("0"):
                return _digits(number)  # "007", "05": digits as written, not a value
            return str(num2words(int(value), lang="ru", gender=gender))
        return str(num2words(value, lang="ru"))
    except (InvalidOperation, ValueError, KeyError, OverflowError):
        # num2words cannot say it (tiny fractions, odd forms): the digits are still speech
        return _digits(number)


def _unit_of(token: str) -> str:
    t = token.lower()
    if t in ("₽", "р.") or t.startswith("руб"):
        return "rub"
    if t.startswith("коп"):
        return "kop"
    if t == "$" or t.startswith("доллар"):
        return "usd"
    return "eur"


def _money(number: str, unit_token: str) -> str:
    unit = _unit_of(unit_token)
    written = unit_token.lower() not in ("₽", "р.", "$", "€") and not unit_token.lower().startswith(
        ("руб.", "коп.")
    )
    if written and unit_token.lower() not in ("руб", "коп"):
        # the author wrote the unit with its ending: keep their grammar, only spell the number
        return f"{_words(number, _UNITS[unit][3])} {unit_token}"
    if unit == "rub" and ("," in number or "." in number):
        rubles, _, kopecks = number.replace(",", ".").partition(".")
        kopecks = (kopecks + "0")[:2]
        spoken = f"{_words(rubles)} {_form(rubles, 'rub')}"
        if int(kopecks):
            spoken += f" {_words(str(int(kopecks)), 'f')} {_form(str(int(kopecks)), 'kop')}"
        return spoken
    return f"{_words(number, _UNITS[unit][3])} {_form(number, unit)}"


def _money_match(m: re.Match[str]) -> str:
    spoken = _money(m[1], m[2])
    # "… 50 коп." at the end or before a capital: the abbreviation's dot also ended the sentence
    rest = m.string[m.end() :].lstrip()
    if m[2].endswith(".") and (not rest or rest[0].isupper()):
        spoken += "."
    return spoken


def _date(m: re.Match[str]) -> str:
    day, month, year = int(m[1]), int(m[2]), m[3]
    if not (1 <= day <= 31 and 1 <= month <= 12):
        return m[0]
    full_year = int(year) + (2000 if len(year) == 2 else 0)
    day_words = num2words(day, lang="ru", to="ordinal", gender="n")
    year_words = num2words(full_year, lang="ru", to="ordinal", case="genitive")
    return f"{day_words} {_MONTHS[month - 1]} {year_words} года"


def _time(m: re.Match[str]) -> str:
    minutes = m[2]
    minute_words = "ноль ноль" if minutes == "00" else _words(minutes)
    return f"{_words(str(int(m[1])))} {minute_words}"


def verbalize(text: str) -> str:
    """Text with every number, price, percent, date, time and listed abbreviation in words."""
    if not any(ch.isdigit() for ch in text) and "." not in text:
        return text
    for pattern, words in _ABBREVIATIONS:
        text = pattern.sub(words, text)
    text = _GROUPED.sub(lambda m: re.sub(_SPACE, "", m[1]), text)
    text = _DATE.sub(_date, text)
    text = _DAY_MONTH.sub(
        lambda m: f"{num2words(int(m[1]), lang='ru', to='ordinal', gender='n')} {m[2]}", text
    )
    text = _YEAR.sub(
        lambda m: f"{num2words(int(m[1]), lang='ru', to='ordinal', case=_YEAR_CASE[m[2]])} {m[2]}", text
    )
    text = _TIME.sub(_time, text)
    text = _CURRENCY_BEFORE.sub(lambda m: _money(m[2], m[1]), text)
    text = _MONEY.sub(_money_match, text)
    text = _PERCENT.sub(lambda m: f"{_words(m[1])} {_form(m[1], 'pct')}", text)
    text = _SIGNED.sub(r"минус \1", text)
    text = _DECIMAL.sub(lambda m: _words(f"{m[1]}.{m[2]}"), text)
    text = _INTEGER.sub(lambda m: _words(m[0]), text)
    return _SPACES.sub(" ", text).strip()
