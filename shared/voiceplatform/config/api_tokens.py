"""The recorder API's bearer tokens file: written once by ``vp up``, read by the recorder.

One ``role=token`` per line, roles ``operator`` (everything, personal data included) and
``readonly`` (no caller numbers, no transcripts). The file is created with mode 0600 and never
rewritten, so tokens survive restarts; delete it to issue new ones.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

ROLES = ("operator", "readonly")
TOKENS_FILE = "recorder_api_tokens"


class ApiTokensError(ValueError):
    pass


def ensure_tokens_file(path: Path) -> Path:
    """Create ``path`` with a fresh token per role (0600) unless it exists; return it."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(f"{role}={secrets.token_urlsafe(32)}\n" for role in ROLES)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
    return path


def read_tokens_file(path: Path) -> dict[str, str]:
    """``{role: token}`` from the file; a malformed line or unknown role is a clear error."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ApiTokensError(f"cannot read the API tokens file {path}: {exc.strerror}") from None
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        role, sep, token = line.partition("=")
        role, token = role.strip(), token.strip()
        if not sep or role not in ROLES or not token:
            raise ApiTokensError(f"{path}:{number}: expected 'operator=<token>' or 'readonly=<token>'")
        found[role] = token
    return found
