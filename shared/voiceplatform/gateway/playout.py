"""Playout buffer: bot audio by turn and sentence, cut into 20 ms frames in order.

TTS sentences of one turn may be synthesized by different workers and arrive out of order; the
buffer plays sentence 0, then 1, ... waiting for each. A sentence takes each chunk number once: a
worker that retries a sentence another one started (``bus/work.py``) sends the same numbers again,
and only the chunks not yet added count, so a slow original and its retry are heard once.
``flush`` drops everything at once (barge-in) and reports what the caller actually heard of the
interrupted turn.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class _Sentence:
    pcm: bytearray = field(default_factory=bytearray)
    done: bool = False
    text: str = ""
    next_seq: int = 0  # chunks numbered below this were added already


@dataclass
class TurnAudio:
    turn_id: str
    sentences: dict[int, _Sentence] = field(default_factory=dict)
    expected: int | None = None  # number of sentences, once known
    index: int = 0  # sentence being played
    offset: int = 0  # bytes of it already played
    played_bytes: int = 0

    def sentence(self, index: int) -> _Sentence:
        return self.sentences.setdefault(index, _Sentence())

    @property
    def finished(self) -> bool:
        return self.expected is not None and self.index >= self.expected

    def played_text(self) -> str:
        """Whole sentences played, plus the spoken share of the current one (by words)."""
        parts = [self.sentences[i].text for i in range(self.index) if i in self.sentences]
        current = self.sentences.get(self.index)
        if current is not None and current.text and self.offset > 0:
            share = self.offset / max(len(current.pcm), 1) if current.done else 0.0
            words = current.text.split()
            spoken = int(len(words) * min(share, 1.0))
            if spoken:
                parts.append(" ".join(words[:spoken]) + "…")
        return " ".join(p for p in parts if p)


class Playout:
    def __init__(self, frame_bytes: int) -> None:
        self.frame_bytes = frame_bytes
        self._turns: deque[TurnAudio] = deque()
        self._by_id: dict[str, TurnAudio] = {}
        self._done: list[TurnAudio] = []  # finished while cutting frames, not yet reported

    def turn(self, turn_id: str) -> TurnAudio:
        found = self._by_id.get(turn_id)
        if found is None:
            found = TurnAudio(turn_id)
            self._by_id[turn_id] = found
            self._turns.append(found)
        return found

    def add_audio(
        self, turn_id: str, index: int, pcm: bytes, last: bool, text: str = "", seq: int | None = None
    ) -> bool:
        """Add a chunk of a sentence; False when ``seq`` was added already (a copy: dropped)."""
        sentence = self.turn(turn_id).sentence(index)
        if seq is not None:
            if sentence.done or seq < sentence.next_seq:
                return False
            sentence.next_seq = seq + 1
        sentence.pcm += pcm
        if text and not sentence.text:
            sentence.text = text
        if last:
            sentence.done = True
        return True

    def set_expected(self, turn_id: str, sentences: int) -> None:
        self.turn(turn_id).expected = sentences

    @property
    def current(self) -> TurnAudio | None:
        return self._turns[0] if self._turns else None

    def has(self, turn_id: str) -> bool:
        return turn_id in self._by_id

    def next_frame(self) -> tuple[str, bytes] | None:
        """The next 20 ms frame to play and its turn id, or None (nothing ready: underrun or idle)."""
        while self._turns:
            turn = self._turns[0]
            if turn.finished:
                self._done.append(self._drop_front())
                continue
            sentence = turn.sentences.get(turn.index)
            if sentence is None:
                return None
            available = len(sentence.pcm) - turn.offset
            if available >= self.frame_bytes or (sentence.done and available > 0):
                chunk = bytes(sentence.pcm[turn.offset : turn.offset + self.frame_bytes])
                turn.offset += len(chunk)
                turn.played_bytes += len(chunk)
                if len(chunk) < self.frame_bytes:
                    chunk += b"\x00" * (self.frame_bytes - len(chunk))
                return turn.turn_id, chunk
            if sentence.done:
                turn.index += 1
                turn.offset = 0
                continue
            return None
        return None

    def pop_finished(self) -> list[TurnAudio]:
        """Turns whose every sentence has been played (advancing past trailing empty sentences)."""
        done, self._done = self._done, []
        while self._turns:
            turn = self._turns[0]
            sentence = turn.sentences.get(turn.index)
            while sentence is not None and sentence.done and turn.offset >= len(sentence.pcm):
                turn.index += 1
                turn.offset = 0
                sentence = turn.sentences.get(turn.index)
            if not turn.finished:
                break
            done.append(self._drop_front())
        return done

    def rewind(self, turn_id: str, nbytes: int) -> int:
        """Step back ``nbytes`` in the sentence being played (not before its start), so audio that
        was sent but probably not heard plays again after a pause; returns the bytes stepped back."""
        turn = self._by_id.get(turn_id)
        if turn is None:
            return 0
        step = min(max(0, nbytes - nbytes % 2), turn.offset)
        turn.offset -= step
        turn.played_bytes -= step
        return step

    def drop(self, turn_id: str) -> TurnAudio | None:
        turn = self._by_id.pop(turn_id, None)
        if turn is not None:
            self._turns.remove(turn)
        return turn

    def _drop_front(self) -> TurnAudio:
        turn = self._turns.popleft()
        self._by_id.pop(turn.turn_id, None)
        return turn

    @property
    def idle(self) -> bool:
        return not self._turns
