"""Outbound calls at the FreeSWITCH peer: ``originate`` and the callee at the other end.

``api originate`` / ``bgapi originate`` as mod_commands takes them:
``{var=value,...}<endpoint>/<number> &park()`` (or ``... <exten> [<dialplan>] [<context>]``). The
channel is created with the ``{}`` variables (``origination_uuid`` names it, ``originate_timeout``
bounds the ringing), and the callee scripted for the number decides what happens, as the far end
would: answer after a delay (CHANNEL_ANSWER, CHANNEL_PARK; output ``+OK <uuid>``), busy
(USER_BUSY) or no answer (NO_ANSWER after ``originate_timeout``), each a hangup with that cause and
``-ERR <cause>`` as the output. As with the real ``&park()``, no stream starts by itself: the
gateway starts mod_audio_stream with ``uuid_audio_stream`` when it sees the answer.

Once answered, the callee speaks its script (``Utterance``: audio at a time after the answer) into
the channel; audio spoken before the gateway's stream is attached is lost, as on a real line.
Modelled: the outcome, the ringing time, the variables in every event, the script's timing. Not
modelled: early media (183 with ringback or announcements), SIP codecs, ``originate`` into the
dialplan (the extension form answers and parks like ``&park()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from voiceplatform_devstack.freeswitch_call import PeerCall
from voiceplatform_devstack.freeswitch_channel import cause_name

if TYPE_CHECKING:
    from voiceplatform_devstack.freeswitch import FreeSwitchPeer

DEFAULT_ORIGINATE_TIMEOUT_S = 60.0
USAGE = (
    "-USAGE <call url> <exten>|&<application_name>(<app_args>) [<dialplan>] [<context>] "
    "[<cid_name>] [<cid_num>] [<timeout_sec>]\n"
)


@dataclass(frozen=True)
class Utterance:
    at_s: float  # after the answer
    pcm: bytes  # L16 at the channel rate


@dataclass
class Callee:
    """How the far end of an originate behaves."""

    behaviour: Literal["answer", "busy", "no_answer", "fail"] = "answer"
    ring_s: float = 0.2  # before the answer (or the busy signal)
    script: list[Utterance] = field(default_factory=list)
    fail_cause: str = "NORMAL_TEMPORARY_FAILURE"


def speech_like(seconds: float, rate: int = 8000, hz: float = 220.0, amplitude: int = 6000) -> bytes:
    """A voiced sound (a tone with syllable-like 4 Hz loudness) standing in for speech."""
    t = np.arange(int(rate * seconds)) / rate
    envelope = 0.6 + 0.4 * np.abs(np.sin(2 * np.pi * 4 * t))
    return (np.sin(2 * np.pi * hz * t) * envelope * amplitude).astype("<i2").tobytes()


def beep(seconds: float = 0.4, rate: int = 8000) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * 1000 * t) * 8000).astype("<i2").tobytes()


def human(hello_s: float = 0.5, after_s: float = 0.4, rate: int = 8000, ring_s: float = 0.2) -> Callee:
    """Answers, says a short "алло?" ``after_s`` later, then waits in silence."""
    return Callee("answer", ring_s, [Utterance(after_s, speech_like(hello_s, rate))])


def voicemail(greeting_s: float = 3.5, rate: int = 8000, ring_s: float = 0.2) -> Callee:
    """Answers at once with a long recorded greeting, then the beep, then records in silence."""
    return Callee("answer", ring_s, [Utterance(0.1, speech_like(greeting_s, rate) + beep(0.4, rate))])


def ivr(prompt_s: float = 3.0, rate: int = 8000, ring_s: float = 0.2) -> Callee:
    """Answers with a menu prompt ("нажмите 1 ..."): long speech, recognized by its words."""
    return Callee("answer", ring_s, [Utterance(0.1, speech_like(prompt_s, rate, hz=300.0))])


def parse_originate(arg: str) -> tuple[dict[str, str], str, str]:
    """``{a=1,b=2}sofia/gateway/gw/79990001122 &park()`` → (variables, endpoint, application)."""
    text = arg.strip()
    variables: dict[str, str] = {}
    if text.startswith("{"):
        close = text.find("}")
        if close < 0:
            raise ValueError("unclosed {")
        for item in _split_vars(text[1:close]):
            name, _, value = item.partition("=")
            if name:
                variables[name.strip()] = value.strip().strip("'")
        text = text[close + 1 :]
    endpoint, _, app = text.partition(" ")
    return variables, endpoint, app.strip()


def _split_vars(text: str) -> list[str]:
    items, current, escaped = [], "", False
    for ch in text:
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    return items


class Outbound:
    """The peer's ``originate`` and its callees (by dialled number; ``default`` for the rest)."""

    def __init__(self, peer: FreeSwitchPeer) -> None:
        self.peer = peer
        self.callees: dict[str, Callee] = {}
        self.default = Callee()
        self.originated: list[PeerCall] = []

    async def originate(self, arg: str) -> str:
        try:
            variables, endpoint, app = parse_originate(arg)
        except ValueError:
            return USAGE
        if not endpoint or not app:
            return "-ERR INVALID_NUMBER_FORMAT\n"
        number = endpoint.rsplit("/", 1)[-1].split("@", 1)[0]
        callee = self.callees.get(number, self.default)
        uuid = variables.get("origination_uuid") or ""
        if not uuid or uuid in self.peer.calls:
            uuid = str(uuidlib.uuid4())
        call = PeerCall(
            self.peer,
            uuid=uuid,
            destination=number,
            caller=variables.get("origination_caller_id_number", "0000000000"),
            rate=8000,
            ws_url=None,
            metadata=None,
            stream_rate=8000,
            mix_type="mono",
            idle_silence=True,
            early_frames=self.peer.early_audio_frames,
        )
        call.variables.update(variables)
        self.peer.calls[uuid] = call
        self.peer.all_calls.append(call)
        self.peer.sessions_since_start += 1
        self.originated.append(call)
        call.start()
        timeout = _seconds(variables.get("originate_timeout"), DEFAULT_ORIGINATE_TIMEOUT_S)
        if callee.behaviour == "no_answer":
            await _sleep_unless_ended(call, timeout)
            return self._failed(call, "NO_ANSWER")
        await _sleep_unless_ended(call, min(callee.ring_s, timeout))
        if call.state == "hangup":
            return f"-ERR {call.hangup_cause or 'ORIGINATOR_CANCEL'}\n"
        if callee.ring_s > timeout:
            return self._failed(call, "NO_ANSWER")
        if callee.behaviour == "busy":
            return self._failed(call, "USER_BUSY")
        if callee.behaviour == "fail":
            return self._failed(call, cause_name(callee.fail_cause))
        call.mark_answered()
        self.peer.spawn(self._speak(call, callee.script), uuid)
        return f"+OK {uuid}\n"

    @staticmethod
    def _failed(call: PeerCall, cause: str) -> str:
        call.begin_hangup(cause)
        return f"-ERR {cause}\n"

    @staticmethod
    async def _speak(call: PeerCall, script: list[Utterance]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for item in sorted(script, key=lambda u: u.at_s):
            await _sleep_unless_ended(call, max(item.at_s - (loop.time() - started), 0.0))
            if call.state != "answered":
                return
            await call.stream_pcm(item.pcm)


def _seconds(text: str | None, default: float) -> float:
    try:
        return float(text) if text else default
    except ValueError:
        return default


async def _sleep_unless_ended(call: PeerCall, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(call.ended.wait(), seconds)
