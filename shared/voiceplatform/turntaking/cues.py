"""Text cues of Russian turn-taking, from the words a recognizer heard.

- ``ends_incomplete``: the utterance stops where a Russian sentence cannot end: on a conjunction,
  a preposition, a hesitation ("э-э", "ну") or a comma. A pause there is a pause, not an end of turn.
- ``is_backchannel``: the utterance is only listener feedback ("угу", "ага", "да-да", "мм"): said
  while the robot speaks it must not interrupt it nor enter the dialogue.

Both are pure functions of the text; the gateway's turn policy and the VAD's end-of-turn decision
combine them with the audio signals.
"""

from __future__ import annotations

import re

from rapidfuzz.distance import Levenshtein

_WORD = re.compile(r"[а-яёa-z0-9]+(?:-[а-яёa-z0-9]+)*", re.IGNORECASE)

# words after which a Russian sentence cannot end (conjunctions, prepositions, particles that
# introduce something, hesitations); "что" covers "что ..." clauses, not the question "что?"
# (a question mark after it is a finished turn, see ends_incomplete)
_INCOMPLETE_LAST = frozenset(
    [
        "и",
        "а",
        "но",
        "или",
        "либо",
        "да-и",
        "что",
        "чтобы",
        "потому",
        "поэтому",
        "который",
        "которая",
        "которое",
        "которые",
        "которых",
        "если",
        "когда",
        "как",
        "где",
        "куда",
        "откуда",
        "пока",
        "хотя",
        "чем",
        "зато",
        "причем",
        "притом",
        "то-есть",
        "тоесть",
        "ли",
        "бы",
        "же",
        "в",
        "во",
        "на",
        "с",
        "со",
        "к",
        "ко",
        "по",
        "для",
        "от",
        "до",
        "из",
        "изо",
        "у",
        "о",
        "об",
        "обо",
        "про",
        "за",
        "под",
        "над",
        "при",
        "без",
        "через",
        "перед",
        "между",
        "около",
        "возле",
        "после",
        "из-за",
        "из-под",
        "вместо",
        "кроме",
        "среди",
        "э",
        "ээ",
        "эээ",
        "э-э",
        "э-э-э",
        "м",
        "мм-м",
        "м-м",
        "ну",
        "вот",
        "это",
        "этот",
        "эта",
        "эти",
        "мой",
        "моя",
        "моё",
        "мое",
        "мои",
        "наш",
        "наша",
        "ваш",
        "ваша",
        "еще",
        "ещё",
        "не",
        "ни",
        "очень",
        "самый",
        "самая",
        "такой",
        "такая",
        "типа",
        "короче",
        "значит",
    ]
)

_BACKCHANNEL_WORDS = frozenset(
    [
        "угу",
        "ага",
        "ага-ага",
        "угу-угу",
        "да",
        "да-да",
        "да-да-да",
        "мм",
        "ммм",
        "мгм",
        "м-м-м",
        "мм-хм",
        "хм",
        "ну-ну",
        "так-так",
        "ясно",
        "понятно",
        "понял",
        "поняла",
        "хорошо",
        "ладно",
        "ок",
        "окей",
        "ок-ок",
        "конечно",
        "точно",
        "верно",
    ]
)
_LONG_BACKCHANNEL_WORDS = tuple(w for w in _BACKCHANNEL_WORDS if len(w) >= 3)
# longest backchannel we accept, in words: "да да понятно" yes, a real sentence no
_BACKCHANNEL_MAX_WORDS = 3


def words(text: str) -> list[str]:
    """Lower-case words (ё folded to е), punctuation dropped."""
    return [w.replace("ё", "е") for w in _WORD.findall(text.lower())]


def ends_incomplete(text: str) -> bool:
    """True when the utterance stops where a sentence cannot end (see the module docstring)."""
    stripped = text.strip()
    if not stripped:
        return False
    if stripped[-1] in "?!.":
        # a full stop after "и." is the recognizer guessing; after anything else trust it
        tail = words(stripped)
        return bool(tail) and stripped[-1] == "." and tail[-1] in _INCOMPLETE_LAST and tail[-1] != "что"
    if stripped.endswith((",", "-", "—", ":", "…")):
        return True
    tail = words(stripped)
    return bool(tail) and tail[-1] in _INCOMPLETE_LAST


def _feedback_word(word: str) -> bool:
    """A backchannel word, or one letter away from one: a recognizer hears a short, quiet "ага" as
    "адга" or "угу" as "уху" (words of three letters or more only, so "да"/"до" stay apart)."""
    if word in _BACKCHANNEL_WORDS:
        return True
    if len(word) < 3:
        return False
    return any(
        len(known) >= 3 and Levenshtein.distance(word, known, score_cutoff=1) <= 1
        for known in _BACKCHANNEL_WORDS
    )


def is_backchannel(text: str) -> bool:
    """True when every word is listener feedback and there are only a few of them."""
    found = words(text)
    return 0 < len(found) <= _BACKCHANNEL_MAX_WORDS and all(_feedback_word(w) for w in found)
