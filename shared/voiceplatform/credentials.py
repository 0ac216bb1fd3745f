"""Passwords of a local platform (`vp up`, e2e tests), generated at first start and kept 0600.

One JSON file in the data dir holds a password per NATS user (``bus.permissions.USERS``), one for
the embedded PostgreSQL and one for the embedded Redis. A later start reuses them (a user added to
the permissions since gets a new one). Nothing here is ever printed: the dataclass hides its values.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from voiceplatform.bus.auth import NatsAuth
from voiceplatform.bus.natsconf import new_password
from voiceplatform.bus.permissions import ADMIN_USER, USERS

CREDENTIALS_FILE = "credentials.json"


@dataclass(frozen=True, slots=True)
class LocalCredentials:
    path: Path
    nats: dict[str, str] = field(repr=False)
    postgres: str = field(repr=False)
    redis: str = field(repr=False)

    @classmethod
    def load_or_create(cls, workdir: Path) -> LocalCredentials:
        path = workdir / CREDENTIALS_FILE
        data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        nats = {str(k): str(v) for k, v in dict(data.get("nats", {})).items()}
        changed = not path.is_file()
        for user in USERS:
            if user not in nats:
                nats[user] = new_password()
                changed = True
        for key in ("postgres", "redis"):
            if not data.get(key):
                data[key] = new_password()
                changed = True
        found = cls(path, nats, str(data["postgres"]), str(data["redis"]))
        if changed:
            found._save()
        path.chmod(0o600)
        return found

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"nats": self.nats, "postgres": self.postgres, "redis": self.redis}, indent=2)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text + "\n")
        tmp.replace(self.path)

    def nats_env(self, user: str) -> dict[str, str]:
        """``NATS_USER``/``NATS_PASSWORD`` for a service (or any user of the permissions)."""
        return {"NATS_USER": user, "NATS_PASSWORD": self.nats[user]}

    def admin_options(self) -> dict[str, Any]:
        """nats-py connect options of the operator's user (tests, tools; never a service)."""
        return NatsAuth(ADMIN_USER, SecretStr(self.nats[ADMIN_USER])).options()
