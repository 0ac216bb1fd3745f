"""One bot turn: stream a provider's deltas, cut them into sentences, publish each as it completes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

from voiceplatform import load, metrics, subjects, tracing
from voiceplatform.bus import Bus
from voiceplatform.bus.work import check_still_ours
from voiceplatform.config import RobotConfig
from voiceplatform.providers import LlmChunk, LlmOptions, LlmProvider
from voiceplatform.providers.chain import Attempt, ChainOutcome, Failure, ProviderChain
from voiceplatform.sentences import SentenceSplitter
from voiceplatform.wire import ChatMessage, LlmDone, LlmRequest, LlmSentence

SERVICE = "llm"
FIRST_SENTENCE = metrics.STAGE_LATENCY.labels(SERVICE, "llm_first_sentence")


# stands in for the caller's words on a no-input turn: every chat API wants the user to speak last
NO_INPUT_HINT = "[The caller stays silent after your last reply. Re-prompt them briefly, in their language.]"
# a caller who pressed keys: a chat model is told so (the script engine reads the event itself)
DTMF_HINT = "[The caller pressed these phone keys: {}]"


def llm_options(robot: RobotConfig, req: LlmRequest) -> LlmOptions:
    """What a provider is asked with for this turn: the robot's model settings and the turn's facts."""
    cfg = robot.settings.llm
    return LlmOptions(
        temperature=cfg.temperature,
        max_tokens=cfg.max_tokens,
        model=cfg.model,
        dialog_state=req.dialog_state,
        prompt_id=req.prompt_id,
        event=req.event,
        keys=req.user_text if req.event == "dtmf" else "",
        variables=req.variables,
    )


def build_messages(req: LlmRequest) -> list[ChatMessage]:
    """[system prompt] + history + [the user's new message]; empty history entries are skipped."""
    messages: list[ChatMessage] = []
    if req.system_prompt:
        messages.append(ChatMessage(role="system", content=req.system_prompt))
    messages.extend(m for m in req.history if m.content)
    if req.event == "no_input":
        messages.append(ChatMessage(role="user", content=NO_INPUT_HINT, turn_id=req.turn_id))
        return messages
    if req.event == "dtmf":
        messages.append(
            ChatMessage(role="user", content=DTMF_HINT.format(req.user_text), turn_id=req.turn_id)
        )
        return messages
    messages.append(ChatMessage(role="user", content=req.user_text, turn_id=req.turn_id))
    return messages


class TurnOutput:
    """What one turn has generated and published so far."""

    def __init__(self, bus: Bus, req: LlmRequest, clause_chars: int, started: float) -> None:
        self.bus = bus
        self.req = req
        self.clause_chars = clause_chars
        self.started = started
        self.published = 0
        self.provider = ""
        self.reset()

    def reset(self) -> None:
        """Forget an attempt that published nothing (before trying a fallback provider)."""
        self.splitter = SentenceSplitter(clause_chars=self.clause_chars)
        self.parts: list[str] = []
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.model = ""  # as the provider reports it (``meta["model"]``: a Gemini cascade's answer)
        self.dialog_state = self.req.dialog_state
        self.end_call = False
        self.transfer_to = ""
        self.intent = ""

    @property
    def text(self) -> str:
        return "".join(self.parts).strip()

    async def run(
        self,
        chain: ProviderChain[LlmProvider],
        messages: list[ChatMessage],
        options: LlmOptions,
        on_failure: Callable[[Failure], Awaitable[None]] | None = None,
    ) -> ChainOutcome:
        """Run the turn through the provider chain; CancelledError propagates.

        A provider that fails before a sentence went out hands the turn to the next one (this
        output is reset); once a sentence was published the turn ends with what was said. The
        chain's first-chunk deadline counts text only, and each attempt's tokens are its usage.
        """

        def open_stream(attempt: Attempt[LlmProvider]) -> AsyncIterator[LlmChunk]:
            self.reset()
            self.provider = attempt.provider.name
            return attempt.provider.stream_complete(messages, options)

        outcome = await chain.run(
            open_stream,
            self._consume,
            is_output=lambda chunk: bool(chunk.text),
            committed=lambda: self.published > 0,
            on_failure=on_failure,
        )
        if outcome.finished:
            for sentence in self.splitter.flush():
                await self._publish(sentence, last=True)
        return outcome

    async def _consume(self, attempt: Attempt[LlmProvider], chunk: LlmChunk) -> None:
        if chunk.text:
            self.parts.append(chunk.text)
            for sentence in self.splitter.feed(chunk.text):
                await self._publish(sentence, last=False)
        self.prompt_tokens = max(self.prompt_tokens, chunk.prompt_tokens)
        self.completion_tokens = max(self.completion_tokens, chunk.completion_tokens)
        self.model = chunk.meta.get("model", self.model)
        if chunk.dialog_state is not None:
            self.dialog_state = chunk.dialog_state
        self.end_call = self.end_call or chunk.end_call
        self.transfer_to = chunk.transfer_to or self.transfer_to
        self.intent = chunk.meta.get("intent", self.intent)
        usage = attempt.usage
        usage.prompt_tokens, usage.completion_tokens = self.prompt_tokens, self.completion_tokens
        usage.model = self.model

    async def say(self, text: str, track: str = "", end_call: bool = False, transfer_to: str = "") -> None:
        """The whole reply at once: a recorded track (``track``: its id, ``text``: its words) or a
        fixed line for TTS (llm_script mode)."""
        self.parts = [text]
        self.end_call = end_call
        self.transfer_to = transfer_to
        self.intent = track or self.intent
        await self._publish(text, last=True, track=track)

    async def _publish(self, sentence: str, last: bool, track: str = "") -> None:
        check_still_ours()  # this process stalled and the turn went to another: say nothing more
        req = self.req
        if self.published == 0:
            FIRST_SENTENCE.observe(took_ms := (time.monotonic() - self.started) * 1000)
            load.observe_turn(SERVICE, took_ms / 1000)
            tracing.span(
                "llm.first_sentence",
                req.call_id,
                req.turn_id,
                took_ms,
                robot=req.robot,
                provider=self.provider,
            )
        await self.bus.publish(
            subjects.llm_sentence(req.call_id),
            LlmSentence(
                call_id=req.call_id,
                turn_id=req.turn_id,
                index=self.published,
                text=sentence,
                robot=req.robot,
                sample_rate=req.sample_rate,
                last=last,
                track=track,
            ),
            subjects.work_msg_id(req.turn_id, "llm.sentence", self.published),
        )
        self.published += 1

    async def publish_done(self, interrupted: bool = False) -> None:
        if not interrupted:
            check_still_ours()
        req = self.req
        await self.bus.publish(
            subjects.llm_done(req.call_id),
            LlmDone(
                call_id=req.call_id,
                turn_id=req.turn_id,
                text=self.text,
                sentences=self.published,
                interrupted=interrupted,
                provider=self.provider,
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                dialog_state=self.dialog_state,
                hangup=self.end_call and not interrupted,
                transfer_to="" if interrupted else self.transfer_to,
                intent=self.intent,
            ),
            subjects.work_msg_id(req.turn_id, "llm.done"),
        )
