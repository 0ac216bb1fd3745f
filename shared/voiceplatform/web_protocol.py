"""gateway-web's WebSocket close codes and admission words, shared by the gateway and its clients.

A refused or ended socket closes with one of these codes and a short reason; before closing, the
gateway sends a JSON event the client can show (``error``, ``busy`` or ``call.ended``).
"""

from __future__ import annotations

from typing import Final

CLOSE_NORMAL: Final = 1000  # the call ended (its reason in the close reason and the call.ended event)
CLOSE_BAD_START: Final = 1008  # unknown robot, bad sample rate
CLOSE_NOT_ACCEPTING: Final = 1013  # the gateway is draining or not connected to the bus
CLOSE_TOKEN: Final = 4401  # call token missing, forged, expired, reused or for another robot
CLOSE_ORIGIN: Final = 4403  # the page's Origin is not on the allow-list
CLOSE_REPLACED: Final = 4409  # the same call was resumed on a newer socket
CLOSE_GONE: Final = 4410  # resume of a call that has ended (or never existed here)
CLOSE_BUSY: Final = 4429  # the gateway or the robot is at its concurrent-call limit

BUSY_EVENT: Final = "busy"  # {"type": "busy", "scope": "gateway"|"robot", "message": ...}
RESUMABLE_EVENT: Final = "call.resumable"  # {"type", "call_id", "resume_token", "grace_s"}
RESUMED_EVENT: Final = "call.resumed"  # after a resume; carries the next resume token

TOKEN_PATH: Final = "/tokens"  # POST, Authorization: Bearer <api key>, {"robot": ...}
PAGE_TOKEN_PATH: Final = "/page-token"  # POST from an allowed Origin, {"robot": ...}
