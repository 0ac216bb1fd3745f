"""Per-call variables in a robot's texts: ``{name}`` in prompt.txt or greeting_text.

Only ``{word}`` placeholders whose name is a known variable are replaced; every other brace (JSON
examples in a prompt, a placeholder of a variable this call lacks) stays as written, so a prompt
that uses no variables is never changed. Names: a letter, then letters, digits or ``_`` (≤ 32).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
_PLACEHOLDER = re.compile(r"\{([A-Za-z][A-Za-z0-9_]{0,31})\}")
MAX_VALUE_CHARS = 256
MAX_VARIABLES = 32


def fill(text: str, variables: Mapping[str, str]) -> str:
    """``text`` with each ``{name}`` of a known variable replaced by its value."""
    if not variables or "{" not in text:
        return text
    return _PLACEHOLDER.sub(lambda m: variables.get(m.group(1), m.group(0)), text)


def has_placeholders(text: str) -> bool:
    return bool(_PLACEHOLDER.search(text))


def clean_variables(raw: dict[str, object]) -> dict[str, str]:
    """Validated per-call variables: names as ``NAME``, values as text (ValueError otherwise)."""
    if len(raw) > MAX_VARIABLES:
        raise ValueError(f"at most {MAX_VARIABLES} variables per call")
    out: dict[str, str] = {}
    for name, value in raw.items():
        if not NAME.match(name):
            raise ValueError(f"variable name {name!r} must be a letter then letters, digits or _")
        text = "" if value is None else str(value)
        if len(text) > MAX_VALUE_CHARS or any(c in text for c in "\r\n\0"):
            raise ValueError(f"variable {name!r}: at most {MAX_VALUE_CHARS} characters on one line")
        out[name] = text
    return out
