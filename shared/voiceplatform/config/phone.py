"""Robot settings of the phone features: keypad input (DTMF) and call recording.

Sections of ``RobotSettings`` (``config.json`` keys ``dtmf`` and ``recording``); see docs/robots.md.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

DTMF_KEYS = frozenset("0123456789*#ABCD")


class DtmfConfig(BaseModel):
    """How the caller's key presses become a caller turn (phone calls)."""

    model_config = ConfigDict(extra="forbid")

    # False: keys are only published (call.dtmf) and recorded, never a turn
    enabled: bool = True
    # this key ends a sequence at once and is not part of it ("" : no end key)
    end_key: str = "#"
    # a sequence also ends this long after its last key
    inter_digit_ms: int = Field(default=2000, ge=100, le=30_000)
    # ... or when it has this many keys (1: every key is a turn of its own, as in a menu)
    max_digits: int = Field(default=16, ge=1, le=64)
    # a key pressed while the robot speaks interrupts it, as speech does
    barge_in: bool = True

    @field_validator("end_key")
    @classmethod
    def _one_key(cls, value: str) -> str:
        if value and (len(value) != 1 or value not in DTMF_KEYS):
            raise ValueError("end_key must be one of 0-9 * # A-D, or empty")
        return value


class RecordingConfig(BaseModel):
    """Recording of calls: the gateways' stereo WAV, and FreeSWITCH's own file (``uuid_record``)."""

    model_config = ConfigDict(extra="forbid")

    # FreeSWITCH records every phone call of this robot from its start (else only on control.record)
    enabled: bool = False
    # the gateway writes every call, web and phone, as a stereo WAV (caller left, robot right);
    # false (or ROBOT_RECORDING__CALLS=false for every robot): no such file (docs/operations.md)
    calls: bool = True
