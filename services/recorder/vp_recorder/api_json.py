"""JSON responses of the recorder API as UTF-8 text: Russian transcripts read as themselves, not as
``\\u`` escapes (every route answers through this class)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from starlette.responses import JSONResponse as _StarletteJSON


class JSONResponse(_StarletteJSON):
    media_type = "application/json; charset=utf-8"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def iso(at: datetime | None) -> str | None:
    """A stored time as the API shows it: ISO 8601, UTC, milliseconds."""
    return None if at is None else at.astimezone(UTC).isoformat(timespec="milliseconds")
