"""Number words → digits, so "пятьсот рублей" and "500 рублей" mean the same to the brain.

Speech recognizers write numbers either way (whisper mostly in digits, SpeechKit often in words),
and a robot author writes examples either way too. Both the caller's text and a robot's phrases go
through :func:`words_to_digits` before matching. The conversion is ``number-parser``'s, which knows
Russian cardinals in every case ("двухсот", "пятистах", "одну"); ordinals stay words.
"""

from __future__ import annotations

from functools import lru_cache

import structlog
from prometheus_client import Counter

log = structlog.get_logger("voiceplatform.numerals")

NUMERAL_ERRORS = Counter(
    "vp_numerals_errors_total", "Texts the number-word converter failed on (kept as they were)", ["language"]
)
# number-parser knows these; other languages pass through unchanged
SUPPORTED = frozenset({"ru", "uk", "en", "es", "hi"})


def _language(language: str) -> str:
    return language.split("-")[0].split("_")[0].lower()


@lru_cache(maxsize=4096)
def words_to_digits(text: str, language: str = "ru") -> str:
    """``text`` with its cardinal number words replaced by digits; never raises."""
    lang = _language(language)
    if not text or lang not in SUPPORTED:
        return text
    try:
        # imported here: the package builds its word tables on import (a few ms, once)
        from number_parser import parse

        return str(parse(text, language=lang))
    except Exception as exc:  # a converter bug must never cost a turn: keep the words
        NUMERAL_ERRORS.labels(lang).inc()
        log.warning("numerals.convert_failed", language=lang, error=f"{type(exc).__name__}: {exc}")
        return text
