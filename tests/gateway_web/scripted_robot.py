"""A test-only robot behind gateway-web: it hears the caller's audio on the bus (a loudness
threshold stands in for VAD, a script for ASR and the LLM), and answers each utterance with scripted
sentences and tone "speech" as the tts stage would, so a browser call has a real dialogue to show.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from voiceplatform import subjects
from voiceplatform.bus import Bus, Envelope, Subscription
from voiceplatform.wire import (
    AsrFinal,
    AudioChunk,
    LlmDone,
    LlmSentence,
    PromptSwitched,
    TtsAudio,
    VadSpeechEnded,
    VadSpeechStarted,
)

RATE = 16000
LOUD_RMS = 300  # int16 RMS of a 20 ms frame that counts as speech
START_FRAMES = 4  # this many loud frames in a row start an utterance
END_FRAMES = 25  # this many quiet ones end it (500 ms)
SECONDS_PER_WORD = 0.35  # the length of a reply's tone per word of its text


@dataclass
class Reply:
    heard: str  # what the scripted ASR "recognizes"
    sentences: list[str]
    topic: str = ""  # a prompt switch published before the reply ("" for none)


@dataclass
class _Caller:
    loud: int = 0
    quiet: int = 0
    speaking: bool = False
    frames: int = 0
    started_frame: int = 0
    turns: int = 0


@dataclass
class ScriptedRobot:
    bus: Bus
    script: list[Reply]
    robot: str = "bot"
    think_s: float = 0.5  # from the end of the caller's speech to the transcript and the reply
    calls: dict[str, _Caller] = field(default_factory=dict)
    _sub: Subscription | None = None
    _answering: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._sub = await self.bus.subscribe(subjects.ANY_AUDIO_IN, self._audio)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
        for task in list(self._answering):
            task.cancel()

    async def _audio(self, env: Envelope) -> None:
        chunk = env.message
        if not isinstance(chunk, AudioChunk):
            return
        caller = self.calls.setdefault(chunk.call_id, _Caller())
        caller.frames += 1
        samples = np.frombuffer(chunk.pcm, dtype="<i2").astype(np.float64)
        loud = bool(samples.size) and float(np.sqrt(np.mean(samples**2))) > LOUD_RMS
        caller.loud, caller.quiet = (caller.loud + 1, 0) if loud else (0, caller.quiet + 1)
        turn_id = f"{chunk.call_id}-t{caller.turns}"
        if not caller.speaking and caller.loud >= START_FRAMES:
            caller.speaking, caller.started_frame = True, caller.frames - START_FRAMES
            await self.bus.publish(
                subjects.vad(chunk.call_id),
                VadSpeechStarted(
                    call_id=chunk.call_id, turn_id=turn_id, audio_offset_ms=caller.started_frame * 20
                ),
            )
        elif caller.speaking and caller.quiet >= END_FRAMES:
            caller.speaking = False
            caller.turns += 1
            speech_ms = (caller.frames - END_FRAMES - caller.started_frame) * 20
            await self.bus.publish(
                subjects.vad(chunk.call_id),
                VadSpeechEnded(
                    call_id=chunk.call_id,
                    turn_id=turn_id,
                    audio_offset_ms=(caller.frames - END_FRAMES) * 20,
                    speech_ms=speech_ms,
                ),
            )
            reply = self.script[(caller.turns - 1) % len(self.script)]
            task = asyncio.create_task(self._answer(chunk.call_id, turn_id, reply))
            self._answering.add(task)  # a handler must not block the subscription: answer aside
            task.add_done_callback(self._answering.discard)

    async def _answer(self, call_id: str, turn_id: str, reply: Reply) -> None:
        await asyncio.sleep(self.think_s)
        await self.bus.publish(
            subjects.asr(call_id), AsrFinal(call_id=call_id, turn_id=turn_id, text=reply.heard)
        )
        if reply.topic:
            await self.bus.publish(
                subjects.lifecycle(call_id),
                PromptSwitched(
                    call_id=call_id, turn_id=turn_id, from_prompt="default", to_prompt=reply.topic
                ),
            )
        last = len(reply.sentences) - 1
        for index, text in enumerate(reply.sentences):
            await self.bus.publish(
                subjects.llm_sentence(call_id),
                LlmSentence(
                    call_id=call_id,
                    turn_id=turn_id,
                    index=index,
                    text=text,
                    robot=self.robot,
                    sample_rate=RATE,
                    last=index == last,
                ),
            )
            await self.bus.publish(
                subjects.tts_audio(call_id),
                TtsAudio(
                    call_id=call_id,
                    turn_id=turn_id,
                    index=index,
                    seq=0,
                    sample_rate=RATE,
                    pcm=tone(len(text.split()) * SECONDS_PER_WORD),
                    last=True,
                    text=text,
                ),
            )
        await self.bus.publish(
            subjects.llm_done(call_id),
            LlmDone(
                call_id=call_id,
                turn_id=turn_id,
                text=" ".join(reply.sentences),
                sentences=len(reply.sentences),
            ),
        )


def tone(seconds: float, hz: float = 220.0) -> bytes:
    t = np.arange(int(RATE * seconds)) / RATE
    return (np.sin(2 * np.pi * hz * t) * 3000).astype("<i2").tobytes()


# the caller's two utterances (the fake microphone's WAV) and the robot's answers to them
SAID = ["Здравствуйте, у меня дома живёт собака.", "Её зовут Шарик, ей три года."]
SCRIPT = [
    Reply(
        SAID[0],
        [
            "Как здорово, что у вас есть собака!",
            "Собаки очень преданные и умные друзья.",
            "Расскажите, какой она породы, как её зовут и сколько ей лет?",
        ],
        topic="pets",
    ),
    Reply(SAID[1], ["Шарик — отличное имя!", "Передавайте ему привет от меня."]),
]
