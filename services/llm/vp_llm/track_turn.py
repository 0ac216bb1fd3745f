"""One turn of an ``llm_script`` robot: choose a recorded track, publish it as the reply's sentence.

The reply is one ``llm.sentence`` carrying the track's id and exact words (``track``, ``text``):
TTS plays the recording instead of synthesizing, and everything after (playout, barge-in, the
turn's figures, heard text, records) is the pipeline's own. How the track is chosen:

1. a generative provider (``llm.provider`` or a fallback that is not ``script``) is asked for one
   track id; meanwhile the meaning match runs on the encoder's thread;
2. its answer names no known track, or it failed: the meaning match decides;
3. no track fits (``none``, or nothing similar enough): the manifest's ``fallthrough`` — a track,
   or ``tts``: the generative provider's own reply as in pipeline mode, else the robot's
   ``fallback_text``, synthesized.

A turn without words is decided by the manifest alone: keys pressed choose the track with that
``dtmf``, a silence plays the ``no_input`` track; without one, they fall through as in 3.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from prometheus_client import Counter

from voiceplatform.config import RobotConfig
from voiceplatform.config.tracks import Track, Tracks, load_tracks
from voiceplatform.meaning import EncoderUnavailable
from voiceplatform.providers import LlmChunk, LlmOptions, LlmProvider
from voiceplatform.providers.chain import Attempt, Failure, ProviderChain
from voiceplatform.wire import LlmRequest
from vp_llm.track_choice import Choice, TrackChooser
from vp_llm.turn import TurnOutput, build_messages, llm_options

log = structlog.get_logger("vp_llm.tracks")

CHOICES = Counter("vp_llm_track_choices_total", "llm_script turns, by how the reply was chosen", ["how"])
SCRIPT = "script"
# the platform's line when a robot without a generative provider has no track for the caller
DEFAULT_FALLTHROUGH_TEXT = "Простите, я не поняла. Повторите, пожалуйста."
# an id is a few tokens; a model that starts explaining is cut short
CHOICE_MAX_TOKENS = 16

ChainFactory = Callable[[list[str]], ProviderChain[LlmProvider]]
OnFailure = Callable[[Failure], Awaitable[None]]


def generative_providers(robot: RobotConfig) -> list[str]:
    cfg = robot.settings.llm
    return [name for name in dict.fromkeys([cfg.provider, *cfg.fallback]) if name != SCRIPT]


class TrackTurns:
    """The choosers of every llm_script robot (one per manifest version) and the turn itself."""

    def __init__(self) -> None:
        self._choosers: dict[str, tuple[Tracks, TrackChooser]] = {}

    def chooser(self, robot: RobotConfig) -> TrackChooser:
        """The robot's chooser, rebuilt when its manifest changed; raises TracksError."""
        tracks = load_tracks(robot.path)
        cached = self._choosers.get(robot.name)
        if cached is not None and cached[0] is tracks:
            return cached[1]
        chooser = TrackChooser(tracks, robot.settings.language)
        chooser.warm()  # embed the phrases now, before the first caller needs them
        self._choosers[robot.name] = (tracks, chooser)
        return chooser

    async def ready(self, robot: RobotConfig, timeout_s: float) -> None:
        """Wait until the robot's phrases are embedded (NotReady after ``timeout_s``)."""
        await self.chooser(robot).index.ready(timeout_s)

    async def run(
        self,
        req: LlmRequest,
        robot: RobotConfig,
        out: TurnOutput,
        make_chain: ChainFactory,
        on_failure: OnFailure,
    ) -> str:
        """Publish the turn's reply; returns the outcome label ("ok" or "failed")."""
        chooser = self.chooser(robot)
        manifest = chooser.manifest
        if req.event:
            chosen = manifest.by_dtmf(req.user_text) if req.event == "dtmf" else None
            if req.event == "no_input" and manifest.no_input:
                chosen = manifest.by_id(manifest.no_input)
            if chosen is not None:
                CHOICES.labels(req.event).inc()
                log.info("track.chosen", how=req.event, track=chosen.id, score=1.0, matched=req.user_text)
                out.provider = out.provider or "manifest"
                await _play(out, chosen)
                return "ok"
        generative = generative_providers(robot)
        # keys and silences are no words to match: they fall through (a generative provider is
        # told about them by build_messages)
        user_text = req.user_text if not req.event else ""
        meaning = asyncio.create_task(_by_meaning(chooser, user_text))
        try:
            choice: Choice | None = None
            if generative and user_text:
                choice = await self._ask(chooser, req, robot, make_chain(generative), out)
            if choice is None:
                choice = await meaning
        finally:
            meaning.cancel()
        CHOICES.labels(choice.how).inc()
        track = choice.track or chooser.manifest.fallthrough_track
        log.info(
            "track.chosen",
            how=choice.how,
            track=track.id if track is not None else "",
            score=round(choice.score, 3),
            matched=choice.matched,
        )
        if track is not None:
            out.provider = out.provider or "meaning"
            await _play(out, track)
            return "ok"
        if generative:
            options = llm_options(robot, req)
            outcome = await out.run(make_chain(generative), build_messages(req), options, on_failure)
            if outcome.finished or out.published:
                return "ok" if outcome.finished else "failed"
        out.provider = "fallthrough"
        await out.say(robot.settings.fallback_text or DEFAULT_FALLTHROUGH_TEXT)
        return "ok"

    async def _ask(
        self,
        chooser: TrackChooser,
        req: LlmRequest,
        robot: RobotConfig,
        chain: ProviderChain[LlmProvider],
        out: TurnOutput,
    ) -> Choice | None:
        """The generative provider's choice; None when it failed or named no known track."""
        dialogue = [m for m in build_messages(req) if m.role != "system"]
        messages = chooser.choice_messages(req.system_prompt, dialogue)
        cfg = robot.settings.llm
        max_tokens = min(cfg.max_tokens, CHOICE_MAX_TOKENS)
        options = LlmOptions(temperature=0.0, max_tokens=max_tokens, model=cfg.model)
        parts: list[str] = []

        def open_stream(attempt: Attempt[LlmProvider]) -> AsyncIterator[LlmChunk]:
            parts.clear()
            return attempt.provider.stream_complete(messages, options)

        async def consume(attempt: Attempt[LlmProvider], chunk: LlmChunk) -> None:
            parts.append(chunk.text)
            attempt.usage.prompt_tokens = max(attempt.usage.prompt_tokens, chunk.prompt_tokens)
            attempt.usage.completion_tokens = max(attempt.usage.completion_tokens, chunk.completion_tokens)
            out.prompt_tokens = max(out.prompt_tokens, chunk.prompt_tokens)
            out.completion_tokens = max(out.completion_tokens, chunk.completion_tokens)

        outcome = await chain.run(open_stream, consume, is_output=lambda chunk: bool(chunk.text))
        answer = "".join(parts)
        if not outcome.finished:
            log.warning("track.choice_failed", failure=str(outcome.failure)[:200])
            return None
        choice = chooser.parse_answer(answer)
        if choice is None:
            CHOICES.labels("llm_unknown").inc()
            log.warning("track.choice_unknown", answer=answer[:80])
        else:
            out.provider = outcome.provider  # the reply's record names who chose it
        return choice


async def _by_meaning(chooser: TrackChooser, user_text: str) -> Choice:
    try:
        return await chooser.by_meaning(user_text)
    except EncoderUnavailable as exc:
        log.warning("track.meaning_unavailable", error=str(exc)[:200])
        return Choice(None, "no_encoder")


async def _play(out: TurnOutput, track: Track) -> None:
    await out.say(track.text, track=track.id, end_call=track.end_call, transfer_to=track.transfer_to)
