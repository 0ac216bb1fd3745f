"""Make text safe for Festival's Russian voice (msu_ru_nsh) and quote it as a Scheme string.

Festival splits tokens on whitespace and strips a fixed set of leading/trailing punctuation; any
other non-letter left inside a token ("10:30", "3,5", "%", "—", "…", "«", "@") makes the Russian
letter-to-sound rules fail and the whole utterance is lost. So every token is reduced to letters,
digits, inner hyphens/apostrophes and at most one trailing punctuation mark, and symbols are spelled
out in words. Measured against the real engine (tests/tts fuzz the result).
"""

from __future__ import annotations

import re
import unicodedata

# symbols read as words (Russian), applied before anything is stripped
_SYMBOL_WORDS = {
    "%": " процентов ",
    "№": " номер ",
    "$": " долларов ",
    "€": " евро ",
    "₽": " рублей ",
    "&": " и ",
    "@": " собака ",
    "=": " равно ",
    "°": " градусов ",
}
# letters of neighbouring alphabets the Russian rules do not know, mapped to the closest Russian ones
_LETTER_MAP = str.maketrans(
    {
        "і": "и",
        "І": "И",
        "ї": "и",
        "Ї": "И",
        "є": "е",
        "Є": "Е",
        "ґ": "г",
        "Ґ": "Г",
        "ß": "ss",
        "ў": "у",
        "Ў": "У",
    }
)
# punctuation that ends a token and is kept (festival reads it as a pause or intonation)
_PAUSE_MARKS = ".,!?:;"
# unicode dashes, ellipsis and friends → the pause mark festival understands
_PUNCT_MAP = str.maketrans(
    {"—": ",", "–": ",", "―": ",", "‒": ",", "…": ".", "‼": "!", "⁇": "?", "¿": "", "¡": ""}
)

_CURRENCY_FIRST = re.compile(r"([$€₽])\s*(\d+(?:[.,]\d+)?)")
_ALLOWED_LETTER = re.compile(r"[A-Za-zА-Яа-яЁё0-9]")
_INNER_SPLIT = re.compile(r"[^A-Za-zА-Яа-яЁё0-9'\-+]+")
_DIGIT_SEP = re.compile(r"(?<=\d)[.,:/](?=\d)")
_HYPHEN_EDGES = re.compile(r"^[-']+|[-']+$")
_REPEATED_INNER = re.compile(r"([-'+])[-'+]+")


def _fold_letter(ch: str) -> str:
    """Latin letters with diacritics → plain Latin (é → e); anything else unchanged."""
    decomposed = unicodedata.normalize("NFKD", ch)
    base = "".join(c for c in decomposed if not unicodedata.combining(c))
    return base if base.isascii() and base.isalpha() else ch


def _pause_mark(punct: str) -> str:
    """The one mark kept for a run of trailing punctuation ("?!" → "?", "..." → ".")."""
    for mark in "?!.;:,":
        if mark in punct:
            return mark
    return ""


def _clean_token(token: str) -> tuple[str, str]:
    """A token → (speakable word or "", the trailing pause mark or "")."""
    end = len(token)
    while end > 0 and not _ALLOWED_LETTER.match(token[end - 1]):
        end -= 1
    body, tail = token[:end], token[end:]
    # digits separated by . , : / inside a number ("10:30", "3,5") are read as separate numbers
    body = _DIGIT_SEP.sub(" ", body)
    words = []
    for part in _INNER_SPLIT.split(body):
        part = _REPEATED_INNER.sub(r"\1", part)
        sign = "-" if part.startswith("-") and part[1:2].isdigit() else ""
        plus = "+" if part.startswith("+") and part[1:2].isdigit() else ""
        subwords = _HYPHEN_EDGES.sub("", part.lstrip("+")).replace("+", " плюс ").split()
        if subwords:
            subwords[0] = (sign or plus) + subwords[0]
            words.extend(subwords)
    if not words and tail and set(tail) <= set("-"):
        return "", ","  # a free-standing dash is a pause
    return " ".join(words), _pause_mark(tail)


def festival_safe_text(text: str) -> str:
    """Text festival's Russian voice synthesizes without letter-to-sound errors; may be empty."""
    text = unicodedata.normalize("NFC", text).translate(_LETTER_MAP).translate(_PUNCT_MAP)
    text = _CURRENCY_FIRST.sub(r"\2\1", text)  # "$100" is read "100 долларов"
    for symbol, words in _SYMBOL_WORDS.items():
        text = text.replace(symbol, words)
    text = "".join(_fold_letter(ch) if ord(ch) > 127 and ch.isalpha() else ch for ch in text)
    out: list[str] = []
    for token in text.split():
        word, mark = _clean_token(token)
        if word:
            out.append(word + mark)
        elif mark and out and out[-1][-1] not in _PAUSE_MARKS:
            out[-1] += mark  # a free-standing "—" or "..." becomes the previous word's pause
    return " ".join(out)


def scheme_string(text: str) -> str:
    """A Scheme string literal: backslashes and double quotes escaped, newlines flattened."""
    flat = text.replace("\r", " ").replace("\n", " ")
    return '"' + flat.replace("\\", "\\\\").replace('"', '\\"') + '"'
