"""Streaming sentence splitter: LLM text deltas in, complete sentences out, as early as possible.

TTS starts on the first sentence while the LLM still writes the rest. A boundary is a run of
``. ! ? …`` (plus closing quotes/brackets) followed by whitespace and then the next non-space
character; waiting for that character is what makes the result independent of how the stream is
chunked (``"3."`` + ``"5"`` must stay ``3.5``) and guarantees the final sentence comes from
``flush()``. Not boundaries: known abbreviations (``т.е.``, ``г.``), initials (``А. С. Пушкин``) and a
period or ellipsis followed by a lower-case letter. A long clause (``>= clause_chars``) is cut at a
comma or semicolon, and text with no punctuation at all is cut at a space after ``max_chars``.
"""

from __future__ import annotations

TERMINATORS = ".!?…"
CLOSERS = "\"'»)]”’"
CLAUSE_MARKS = ",;"

# abbreviations that never end a sentence (normalized: lower case, without the final period)
NEVER_FINAL = frozenset(
    {
        "т.е", "т.к", "т.н", "т.ч", "напр", "см", "ср", "г", "гг", "ул", "д", "им", "стр", "рис", "тел",
        "руб", "коп", "тыс", "млн", "млрд", "кв", "пр", "просп", "пер", "обл", "р-н", "проф", "акад",
        "ок", "прим", "англ", "рус", "мин", "сек", "e.g", "i.e", "mr", "mrs", "dr", "vs",
    }
)  # fmt: skip
# abbreviations that end a sentence when the next word starts with a capital letter
MAYBE_FINAL = frozenset({"т.д", "т.п", "др", "etc"})


class SentenceSplitter:
    def __init__(self, clause_chars: int = 120, max_chars: int = 300) -> None:
        self.clause_chars = clause_chars
        self.max_chars = max_chars
        self._buf = ""

    def feed(self, delta: str) -> list[str]:
        """Add a text delta; return the sentences it completed (possibly none)."""
        self._buf += delta
        out: list[str] = []
        while True:
            cut = self._find_cut(self._buf)
            if cut is None:
                break
            end, restart = cut
            sentence = self._buf[:end].strip()
            self._buf = self._buf[restart:]
            if sentence:
                out.append(sentence)
        return out

    def flush(self) -> list[str]:
        """End of stream: whatever is left is the last sentence."""
        rest, self._buf = self._buf.strip(), ""
        return [rest] if rest else []

    @property
    def pending(self) -> str:
        return self._buf

    def _find_cut(self, buf: str) -> tuple[int, int] | None:
        """(end of the sentence, start of the next one), or None while undecidable."""
        n = len(buf)
        # candidates past max_chars are never looked at, so the cut below does not depend on chunking
        scan_end = min(n, self.max_chars)
        i = 0
        while i < scan_end:
            ch = buf[i]
            if ch in TERMINATORS or (ch in CLAUSE_MARKS and i + 1 >= self.clause_chars):
                j = i + 1
                if ch in TERMINATORS:
                    while j < n and buf[j] in TERMINATORS:
                        j += 1
                while j < n and buf[j] in CLOSERS:
                    j += 1
                if j >= n:
                    return None  # the run may go on in the next delta
                if not buf[j].isspace():
                    i = j  # "3.5", "т.е", "a,b": not a boundary
                    continue
                k = j
                while k < n and buf[k].isspace():
                    k += 1
                if k >= n:
                    return None  # need the next word to decide
                if ch in CLAUSE_MARKS or self._is_boundary(buf, i, j, buf[k]):
                    return j, k
                i = k
                continue
            i += 1
        if n > self.max_chars:
            space = buf.rfind(" ", 0, self.max_chars)
            if space > 0:
                return space, space + 1
            return self.max_chars, self.max_chars
        return None

    @staticmethod
    def _is_boundary(buf: str, start: int, end: int, next_char: str) -> bool:
        run = buf[start:end].rstrip(CLOSERS)
        if any(c in "!?" for c in run):
            return True
        # only periods and ellipses from here on
        if next_char.islower():
            return False
        if run != ".":
            return True
        word_start = start
        while word_start > 0 and not buf[word_start - 1].isspace() and buf[word_start - 1] not in '(«"':
            word_start -= 1
        word = buf[word_start:start].lower()
        if word in NEVER_FINAL:
            return False
        if word in MAYBE_FINAL:
            return next_char.isupper()
        # an initial: one capital letter ("А. С. Пушкин")
        return not (len(word) == 1 and buf[start - 1].isupper())


def split_text(text: str, clause_chars: int = 120, max_chars: int = 300) -> list[str]:
    """All sentences of a finished text (same rules as streaming)."""
    splitter = SentenceSplitter(clause_chars, max_chars)
    return splitter.feed(text) + splitter.flush()
