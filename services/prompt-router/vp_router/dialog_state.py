"""Per-call dialogue state in the JetStream KV bucket ``vp_dialog`` (key = call id).

Router instances are stateless and share calls through a queue group, so every change is a
compare-and-set: read (value, revision) → apply a pure function → ``update(last=revision)``; on a
conflict (another instance changed the key meanwhile) read again and re-apply, up to 5 times.

A store remembers the last value it read or wrote of each call (the calls it serves are mostly
changed by it alone): a change starts from that and costs one KV round trip, not two. When another
instance changed the call since, the remembered revision loses the compare-and-set and the change
reads again, so it never acts on a stale state. Reads for their own sake (``load``) go to the KV.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import ClassVar, NamedTuple, TypeVar

import msgspec

from voiceplatform import subjects
from voiceplatform.bus import Bus, KeyValue, KvConflict
from voiceplatform.wire import ChatMessage

T = TypeVar("T")
CAS_ATTEMPTS = 5
REMEMBERED_CALLS = 1000  # last values kept per store (bounded: some calls end on another instance)
MAX_DROPPED_TURNS = 16


class DialogState(msgspec.Struct, kw_only=True):
    VERSION: ClassVar[int] = 1

    v: int = 1
    call_id: str
    robot: str
    channel: str
    sample_rate: int
    prompt_id: str
    history: list[ChatMessage] = msgspec.field(default_factory=list)
    # opaque state of the dialogue engine (script provider), as returned in llm.done
    script_state: str = ""
    turns: int = 0
    # turn id -> played text, for interrupts that arrive before that turn's llm.done
    pending_interrupts: dict[str, str] = msgspec.field(default_factory=dict)
    # caller turns taken out of the dialogue (continued or backchannel): their late messages stay out
    dropped_turns: list[str] = msgspec.field(default_factory=list)
    # per-call variables from call.started (outbound calls): {name} in the prompts
    variables: dict[str, str] = msgspec.field(default_factory=dict)

    def drop_turn(self, turn_id: str) -> int:
        """Take a caller turn and the robot's reply to it out of the history; returns how many left."""
        before = len(self.history)
        self.history = [m for m in self.history if m.turn_id != turn_id]
        self.pending_interrupts.pop(turn_id, None)
        if turn_id not in self.dropped_turns:
            self.dropped_turns.append(turn_id)
            del self.dropped_turns[:-MAX_DROPPED_TURNS]
        return before - len(self.history)


class DialogStateError(Exception):
    pass


class DialogConflict(DialogStateError):
    """Compare-and-set kept losing: too many writers on one call."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(DialogState)


def encode_state(state: DialogState) -> bytes:
    return _encoder.encode(state)


def decode_state(data: bytes) -> DialogState:
    try:
        state = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise DialogStateError(f"undecodable dialog state: {exc}") from None
    if state.v > DialogState.VERSION:
        raise DialogStateError(f"dialog state v{state.v} is newer than v{DialogState.VERSION}")
    return state


class Stored(NamedTuple):
    """A call's state as read, with the revision a compare-and-set of it must name."""

    state: DialogState
    revision: int


class DialogStore:
    def __init__(self, kv: KeyValue, max_history: int = 100, remembered: int = REMEMBERED_CALLS) -> None:
        self.kv = kv
        self.max_history = max_history
        self._remembered = remembered
        self._last: OrderedDict[str, tuple[bytes, int]] = OrderedDict()  # call id → (value, revision)

    @classmethod
    async def open(cls, bus: Bus, ttl_s: float = 0, max_history: int = 100) -> DialogStore:
        return cls(await bus.key_value(subjects.DIALOG_BUCKET, ttl_s=ttl_s), max_history)

    def _remember(self, call_id: str, value: bytes, revision: int) -> None:
        self._last[call_id] = (value, revision)
        self._last.move_to_end(call_id)
        while len(self._last) > self._remembered:
            self._last.popitem(last=False)

    def remembered(self, call_id: str) -> Stored | None:
        """The call's state as this store last read or wrote it (maybe changed since by another
        instance: good for what never changes, like the robot, and as a compare-and-set's start)."""
        last = self._last.get(call_id)
        return Stored(decode_state(last[0]), last[1]) if last is not None else None

    async def create(self, state: DialogState) -> bool:
        """False when the call already has state (a repeated call.started)."""
        value = encode_state(state)
        try:
            revision = await self.kv.create(state.call_id, value)
        except KvConflict:
            return False
        self._remember(state.call_id, value, revision)
        return True

    async def read(self, call_id: str) -> Stored | None:
        entry = await self.kv.get(call_id)
        if entry is None or not entry[0]:
            self._last.pop(call_id, None)
            return None
        stored = Stored(decode_state(entry[0]), entry[1])
        self._remember(call_id, entry[0], entry[1])
        return stored

    async def load(self, call_id: str) -> DialogState | None:
        stored = await self.read(call_id)
        return stored.state if stored is not None else None

    async def delete(self, call_id: str) -> None:
        self._last.pop(call_id, None)
        await self.kv.delete(call_id)

    async def mutate(
        self, call_id: str, change: Callable[[DialogState], T], read: Stored | None = None
    ) -> tuple[DialogState, T] | None:
        """Apply ``change`` (which edits the state in place and may be run again) with CAS.

        The first attempt starts from ``read`` (the state as the caller has just read it; handed
        over, it is edited in place) or else the remembered state, saving a KV round trip; if that
        is stale it loses the compare-and-set, and up to ``CAS_ATTEMPTS`` attempts read again.
        Returns the saved state and what ``change`` returned, or None when the call has no state.
        """
        stored = read or self.remembered(call_id)
        for _ in range(CAS_ATTEMPTS + (stored is not None)):
            if stored is None:
                stored = await self.read(call_id)
                if stored is None:
                    return None
            state = stored.state
            result = change(state)
            if len(state.history) > self.max_history:
                state.history = state.history[-self.max_history :]
            value = encode_state(state)
            try:
                revision = await self.kv.update(call_id, value, last=stored.revision)
            except KvConflict:
                stored = None
                continue
            self._remember(call_id, value, revision)
            return state, result
        raise DialogConflict(f"{CAS_ATTEMPTS} compare-and-set attempts lost on {call_id}")
