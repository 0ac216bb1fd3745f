"""Text normalization before synthesis: LLM output → plain speakable Russian text.

LLMs answer with markdown and emoji now and then; neither should be read aloud. Russian punctuation
(«», —, …) is kept: it carries prosody, and each provider maps what its engine cannot take.
"""

from __future__ import annotations

import re
import unicodedata

_CODE_FENCE = re.compile(r"```[^\n]*\n?|```")
_INLINE_CODE = re.compile(r"`([^`]*)`")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_URL = re.compile(r"https?://\S+|www\.\S+")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+", re.MULTILINE)
_QUOTE = re.compile(r"^\s{0,3}>\s?", re.MULTILINE)
_BULLET = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+", re.MULTILINE)
_EMPHASIS = re.compile(r"(\*{1,3}|_{2,3}|~~)(?=\S)(.+?)(?<=\S)\1")
_SINGLE_UNDERSCORE = re.compile(r"(?<!\w)_(?=\S)(.+?)(?<=\S)_(?!\w)")
_HRULE = re.compile(r"^\s*(?:[-*_]\s*){3,}$", re.MULTILINE)
_TABLE_PIPE = re.compile(r"\s*\|\s*")
_SPACES = re.compile(r"\s+")

# emoji and pictographs; variation selectors and zero-width joiners glue them together
_EMOJI = re.compile(
    "["
    "\U0001f000-\U0001faff"  # mahjong … symbols and pictographs extended-A
    "\U00002600-\U000027bf"  # misc symbols, dingbats
    "\U00002b00-\U00002bff"  # arrows, stars
    "\U0001f1e6-\U0001f1ff"  # regional indicators (flags)
    "\U0000fe00-\U0000fe0f"  # variation selectors
    "\U0000200d\U000020e3"  # zero-width joiner, keycap
    "\U000e0020-\U000e007f"  # tags
    "]+"
)


def _is_speakable(ch: str) -> bool:
    category = unicodedata.category(ch)
    # control, format, private-use, unassigned and surrogate characters are never speech
    return not category.startswith("C") or ch in "\n\t"


def normalize_text(text: str) -> str:
    """Strip markdown, links, emoji and control characters; collapse whitespace to single spaces."""
    text = unicodedata.normalize("NFC", text)
    text = _CODE_FENCE.sub(" ", text)
    text = _INLINE_CODE.sub(r"\1", text)
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _URL.sub(" ", text)
    text = _HRULE.sub(" ", text)
    text = _HEADING.sub("", text)
    text = _QUOTE.sub("", text)
    text = _BULLET.sub("", text)
    for _ in range(2):  # nested emphasis (***bold italic***, **_x_**)
        text = _EMPHASIS.sub(r"\2", text)
        text = _SINGLE_UNDERSCORE.sub(r"\1", text)
    text = _TABLE_PIPE.sub(", ", text) if "|" in text else text
    text = _EMOJI.sub(" ", text)
    text = "".join(ch for ch in text if _is_speakable(ch))
    return _SPACES.sub(" ", text).strip(" ,")
