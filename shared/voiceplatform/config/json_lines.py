"""Where a value sits in a JSON file: ``"states.main.intents[2].reply"`` → its line number.

Problems are reported by path (pydantic's ``loc``, the dialog checker's ``states.x.intents[2]``);
an author wants the line. The text is walked once with the standard library's own string scanner,
recording where every member and element starts.
"""

from __future__ import annotations

import json
import re
from json.decoder import scanstring  # type: ignore[attr-defined]

_SPACE = re.compile(r"[ \t\n\r]*")
_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
Path = tuple[str, ...]


def _positions(text: str) -> dict[Path, int]:
    found: dict[Path, int] = {}
    decoder = json.JSONDecoder()

    def skip(i: int) -> int:
        match = _SPACE.match(text, i)
        return match.end() if match else i

    def value(i: int, path: Path) -> int:
        i = skip(i)
        found.setdefault(path, i)
        char = text[i]
        if char == "{":
            i = skip(i + 1)
            if text[i] == "}":
                return i + 1
            while True:
                key, end = scanstring(text, i + 1)
                found[(*path, key)] = i
                i = value(skip(end) + 1, (*path, key))  # past the ':'
                i = skip(i)
                if text[i] == "}":
                    return i + 1
                i = skip(i + 1)  # past the ','
        if char == "[":
            i = skip(i + 1)
            index = 0
            if text[i] == "]":
                return i + 1
            while True:
                i = skip(value(i, (*path, str(index))))
                index += 1
                if text[i] == "]":
                    return i + 1
                i += 1
        if char == '"':
            return int(scanstring(text, i + 1)[1])
        return int(decoder.raw_decode(text, i)[1])

    try:
        value(0, ())
    except (ValueError, IndexError):  # not valid JSON: nothing to point at
        return {}
    return found


def split_path(where: str) -> Path:
    """``"states.main.intents[2].reply"`` or ``"router.rules.0.prompt"`` → its parts."""
    return tuple(name or index for name, index in _PART.findall(where))


def line_of(text: str, where: str) -> int | None:
    """The line of the deepest part of ``where`` present in the JSON ``text`` (None: not there)."""
    positions = _positions(text)
    path = split_path(where)
    while path:
        if path in positions:
            return text.count("\n", 0, positions[path]) + 1
        path = path[:-1]
    return None
