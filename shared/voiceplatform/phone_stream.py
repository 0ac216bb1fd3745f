"""The per-deployment secret of gateway-fs's media stream URL, in one place.

FreeSWITCH's dialplan opens mod_audio_stream to ``<base>/<channel uuid>?key=<secret>``; gateway-fs
refuses a stream without the key or with a wrong one. ``VP_FS_STREAM_SECRET`` carries it (compose
sets it for FreeSWITCH and gateway-fs alike); ``vp up`` generates one at first start and keeps it in
its work dir (mode 0600), where ``vp call --phone`` finds it too. The value is URL-safe by
construction, is compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
from pathlib import Path
from urllib.parse import quote

SECRET_ENV = "VP_FS_STREAM_SECRET"
SECRET_FILE = "fs_stream_secret"  # in `vp up`'s work dir (.vp)
KEY_PARAM = "key"  # ws://gateway-fs:8090/call/<uuid>?key=<secret>
MIN_LENGTH = 16
# characters a dialplan, a URL and an XML attribute all carry unchanged
_SAFE = re.compile(r"^[A-Za-z0-9_.~-]+$")


def secret_problem(secret: str) -> str | None:
    """Why ``secret`` must not be used as the stream secret, or None (the value is never returned)."""
    if not secret:
        return f"{SECRET_ENV} is not set"
    if len(secret) < MIN_LENGTH:
        return f"{SECRET_ENV} is shorter than {MIN_LENGTH} characters"
    if not _SAFE.match(secret):
        return f"{SECRET_ENV} may hold only letters, digits and - _ . ~ (it goes into a URL)"
    return None


def secret_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison; an empty expected secret matches nothing."""
    if not expected or given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


def stream_url(base: str, uuid: str, secret: str) -> str:
    """The URL FreeSWITCH's dialplan builds: ``<base>/<uuid>?key=<secret>``."""
    return f"{base.rstrip('/')}/{uuid}?{KEY_PARAM}={quote(secret, safe='')}"


def new_secret() -> str:
    return secrets.token_urlsafe(24)


def dev_stream_secret(workdir: Path) -> str:
    """The secret of this machine's `vp up`: generated at first start, kept with mode 0600."""
    path = workdir / SECRET_FILE
    if not path.is_file():
        workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(new_secret())
    return path.read_text().strip()


def find_stream_secret(workdir: Path = Path(".vp")) -> str:
    """For a client (``vp call --phone``): ``VP_FS_STREAM_SECRET``, else the one `vp up` generated."""
    secret = os.environ.get(SECRET_ENV, "")
    if not secret and (workdir / SECRET_FILE).is_file():
        secret = (workdir / SECRET_FILE).read_text().strip()
    return secret
