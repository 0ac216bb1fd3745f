"""Playout buffer: bot audio by turn and sentence, cut into 20 ms frames in order.

TTS sentences of one turn may be synthesized by different workers and arrive out of order; the
buffer plays sentence 0, then 1, ... waiting for each. A sentence takes each chunk number once: a
worker that retries a sentence another one started (``bus/work.py``) sends the same numbers again,
and only the chunks not yet added count, so a slow original and its retry are heard once.
``flush`` drops everything at once (barge-in) and reports what the caller actually heard of the
interrupted turn.

With a ``PlaybackClock`` (a sink that knows what the far end has played: FreeSWITCH's playback
events), a turn whose frames were all sent stays ``sounding`` until its audio was heard, ``drop``
steps back to the last byte heard (so ``played_text`` is the words the caller heard), and
``rewind`` steps back exactly over the unheard part. Without one, frames sent count as heard.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from voiceplatform.gateway.heard import PlaybackClock, SentLog


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

    def step_back(self, nbytes: int) -> int:
        """Move the play position back ``nbytes``, across sentence starts; returns the bytes moved."""
        left = max(0, nbytes - nbytes % 2)
        while left > 0:
            if self.offset == 0:
                if self.index == 0:
                    break
                self.index -= 1
                previous = self.sentences.get(self.index)
                self.offset = len(previous.pcm) - len(previous.pcm) % 2 if previous else 0
                continue
            step = min(left, self.offset)
            self.offset -= step
            self.played_bytes -= step
            left -= step
        return max(0, nbytes - nbytes % 2) - left

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
    def __init__(self, frame_bytes: int, clock: PlaybackClock | None = None) -> None:
        self.frame_bytes = frame_bytes
        self.clock = clock
        self._turns: deque[TurnAudio] = deque()
        self._by_id: dict[str, TurnAudio] = {}
        self._done: list[TurnAudio] = []  # finished while cutting frames, not yet reported
        self._sounding: dict[str, TurnAudio] = {}  # all frames sent, not all heard yet (clock only)
        self._sent = SentLog()

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
                if self.clock is not None:
                    self._sent.sent(turn.turn_id, len(chunk))
                return turn.turn_id, chunk
            if sentence.done:
                turn.index += 1
                turn.offset = 0
                continue
            return None
        return None

    def unheard(self, turn_id: str) -> int:
        """Bytes of the turn sent to the sink and not heard yet (0 without a clock)."""
        if self.clock is None:
            return 0
        return self._sent.unheard(turn_id, self.clock.unheard_bytes())

    def pop_finished(self) -> list[TurnAudio]:
        """Turns whose every sentence has been played (advancing past trailing empty sentences);
        with a clock, once the caller has heard them too."""
        done = self._sent_out()
        if self.clock is None:
            return done
        unheard = self.clock.unheard_bytes()
        self._sent.trim(unheard)
        for turn in done:
            self._sounding[turn.turn_id] = turn
        heard = [t for t in self._sounding.values() if not self._sent.unheard(t.turn_id, unheard)]
        for turn in heard:
            del self._sounding[turn.turn_id]
        return heard

    def _sent_out(self) -> list[TurnAudio]:
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
        was sent but probably not heard plays again after a pause; returns the bytes stepped back.
        With a clock the step is exactly what was not heard (``nbytes`` is ignored)."""
        turn = self._by_id.get(turn_id)
        if turn is None and turn_id in self._sounding:  # all sent, still playing: it plays again
            turn = self._sounding.pop(turn_id)
            self._by_id[turn_id] = turn
            self._turns.appendleft(turn)
        if turn is None:
            return 0
        if self.clock is not None:
            return turn.step_back(self.unheard(turn_id))
        step = min(max(0, nbytes - nbytes % 2), turn.offset)
        turn.offset -= step
        turn.played_bytes -= step
        return step

    def drop(self, turn_id: str) -> TurnAudio | None:
        """Forget the turn's audio (a cut); with a clock its position goes back to the last byte
        the caller heard, so ``played_bytes``/``played_text`` say what was heard."""
        unheard = self.unheard(turn_id)
        turn = self._by_id.pop(turn_id, None)
        if turn is not None:
            self._turns.remove(turn)
        else:
            turn = self._sounding.pop(turn_id, None)
            for finished in self._done if turn is None else []:
                if finished.turn_id == turn_id:
                    turn = finished
                    self._done.remove(finished)
                    break
        if turn is not None and unheard:
            turn.step_back(unheard)
        return turn

    def _drop_front(self) -> TurnAudio:
        turn = self._turns.popleft()
        self._by_id.pop(turn.turn_id, None)
        return turn

    @property
    def idle(self) -> bool:
        return not self._turns and not self._sounding
