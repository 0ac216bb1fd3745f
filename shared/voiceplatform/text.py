"""Inflection-tolerant keyword matching for Russian (and any alphabetic) text.

Used by the prompt-router (keywords → topic prompt) and the script dialogue engine (keywords →
intent), so both understand a caller the same way. Russian inflects nouns and verbs at the end of
the word ("собака", "собаку", "собаки"), so a keyword word matches a token that starts with its
stem: the word cut to its first ``max(4, len - 2)`` letters. A keyword phrase matches when every one
of its words matches some token, in any order ("нет денег" matches "денег у меня нет").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
MIN_STEM = 4
ENDING_LETTERS = 2

Label = TypeVar("Label")


def normalize(text: str) -> str:
    """Lower-case and fold ``ё`` into ``е`` (speech recognizers spell it either way)."""
    return text.lower().replace("ё", "е")


def tokenize(text: str) -> list[str]:
    """Normalized words of ``text``; punctuation and digits-only separators are dropped."""
    return _WORD.findall(normalize(text))


def stem(word: str) -> str:
    """The prefix a token must start with to count as a form of ``word``."""
    word = normalize(word)
    return word[: max(MIN_STEM, len(word) - ENDING_LETTERS)]


@dataclass(frozen=True, slots=True)
class Keyword:
    """One keyword phrase, compiled into the stems of its words."""

    phrase: str
    stems: tuple[str, ...]

    @classmethod
    def parse(cls, phrase: str) -> Keyword:
        stems = tuple(stem(w) for w in tokenize(phrase))
        if not stems:
            raise ValueError(f"keyword without letters: {phrase!r}")
        return cls(phrase=phrase, stems=stems)

    def matches(self, tokens: Sequence[str]) -> bool:
        return all(any(tok.startswith(s) for tok in tokens) for s in self.stems)


class KeywordMatcher(Generic[Label]):
    """Ordered (label, keywords) rules; the first rule with a matching keyword wins."""

    def __init__(self) -> None:
        self._rules: list[tuple[Label, tuple[Keyword, ...]]] = []

    def add(self, label: Label, keywords: Iterable[str]) -> None:
        self._rules.append((label, tuple(Keyword.parse(k) for k in keywords)))

    def __len__(self) -> int:
        return len(self._rules)

    def match_tokens(self, tokens: Sequence[str]) -> tuple[Label, str] | None:
        """The first matching rule's label and the keyword phrase that matched."""
        for label, keywords in self._rules:
            for keyword in keywords:
                if keyword.matches(tokens):
                    return label, keyword.phrase
        return None

    def match(self, text: str) -> tuple[Label, str] | None:
        return self.match_tokens(tokenize(text))


def matches_any(text: str, keywords: Iterable[str]) -> str | None:
    """The first keyword phrase found in ``text``, or None (convenience for one-off checks)."""
    tokens = tokenize(text)
    for phrase in keywords:
        if Keyword.parse(phrase).matches(tokens):
            return phrase
    return None
