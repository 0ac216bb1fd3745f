"""One realtime reply turned into the pipeline's messages, so every consumer sees one shape.

The provider streams a reply's audio and its transcript side by side. The gateway plays a bot turn
as numbered sentences (``tts.audio`` index i, closed by ``last``) and the recorder keeps each
``llm.sentence``; so the transcript is cut into sentences with the pipeline's splitter, and the
audio goes to the sentence being spoken. The audio of sentence i is whatever arrives between the
transcript completing sentence i-1 and sentence i: the transcript usually runs a little ahead of
the audio, so the split (and the played text computed from it at a barge-in) is approximate, while
the audio itself is continuous because sentences play back to back.

A greeting is played by the gateway as one sentence (index 0), so all its audio goes there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from voiceplatform.resampling import StreamResampler
from voiceplatform.sentences import SentenceSplitter
from voiceplatform.wire import LlmDone, LlmSentence, Message, TtsAudio


@dataclass
class RealtimeReply:
    call_id: str
    turn_id: str
    response_id: str
    robot: str
    sample_rate: int  # the call's
    provider_rate: int  # the provider's output
    provider: str
    greeting: bool = False
    item_id: str = ""
    text: str = ""
    done: bool = False
    interrupted: bool = False  # stopped before its end (cancelled, barged in, session lost)
    barged_in: bool = False  # the caller interrupted it: cancelled and truncated by the session
    provider_audio_bytes: int = 0
    started_ts_ms: int = 0  # the provider's response.created
    speech_end_ts_ms: int = 0  # the caller's words it answers ended (0: none, e.g. the greeting)
    sentences: list[str] = field(default_factory=list)
    _audio_index: int = 0
    _open_has_audio: bool = False
    _seq: int = 0
    _splitter: SentenceSplitter = field(default_factory=SentenceSplitter)
    _resampler: StreamResampler | None = None

    def __post_init__(self) -> None:
        self._resampler = StreamResampler(self.provider_rate, self.sample_rate)

    @property
    def audio_ms(self) -> int:
        """Milliseconds of reply audio received from the provider so far."""
        return self.provider_audio_bytes * 1000 // (2 * self.provider_rate)

    @property
    def has_audio(self) -> bool:
        return self.provider_audio_bytes > 0

    def audio(self, pcm: bytes) -> list[Message]:
        assert self._resampler is not None
        self.provider_audio_bytes += len(pcm)
        out = self._resampler.feed(pcm)
        if not out:
            return []
        self._open_has_audio = True
        return [self._chunk(out, last=False)]

    def transcript(self, delta: str) -> list[Message]:
        self.text += delta
        if self.greeting:
            return []  # published whole at the end: the gateway plays a greeting as one sentence
        out: list[Message] = []
        for sentence in self._splitter.feed(delta):
            out.extend(self._sentence(sentence))
        return out

    def finish(self, status: str, prompt_tokens: int, completion_tokens: int) -> list[Message]:
        """The provider's ``response.done``: close the open sentence and account for the turn."""
        assert self._resampler is not None
        self.done = True
        self.interrupted = self.interrupted or status == "cancelled"
        out: list[Message] = []
        if self.greeting:
            if self.text.strip():
                out.append(self._llm_sentence(0, self.text.strip(), last=True))
                self.sentences = [self.text.strip()]
        else:
            for sentence in self._splitter.flush():
                out.extend(self._sentence(sentence))
        tail = self._resampler.flush()
        total = self._audio_index
        if tail or self._open_has_audio or not self.sentences or self.greeting:
            out.append(self._chunk(tail, last=True))
            total += 1
        out.append(
            LlmDone(
                call_id=self.call_id,
                turn_id=self.turn_id,
                text=self.text.strip(),
                sentences=total,
                interrupted=self.interrupted,
                provider=self.provider,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )
        )
        return out

    def _sentence(self, sentence: str) -> list[Message]:
        index = len(self.sentences)
        self.sentences.append(sentence)
        out: list[Message] = [self._llm_sentence(index, sentence, last=False)]
        # the audio heard so far belongs to this sentence: close it, later audio opens the next one
        if self._audio_index <= index:
            out.append(self._chunk(b"", last=True, text=sentence))
            self._audio_index += 1
            self._open_has_audio = False
        return out

    def _llm_sentence(self, index: int, text: str, *, last: bool) -> LlmSentence:
        return LlmSentence(
            call_id=self.call_id,
            turn_id=self.turn_id,
            index=index,
            text=text,
            robot=self.robot,
            sample_rate=self.sample_rate,
            last=last,
            synthesize=False,
        )

    def _chunk(self, pcm: bytes, *, last: bool, text: str = "") -> TtsAudio:
        self._seq += 1
        return TtsAudio(
            call_id=self.call_id,
            turn_id=self.turn_id,
            index=self._audio_index,
            seq=self._seq,
            sample_rate=self.sample_rate,
            pcm=pcm,
            last=last,
            text=text,
            provider=self.provider,
        )
