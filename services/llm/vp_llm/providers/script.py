"""``script`` provider: the deterministic dialogue engine, streamed word by word like a real LLM."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Self

import structlog
from prometheus_client import Counter

from voiceplatform.config import RobotConfig
from voiceplatform.outbound.template import fill
from voiceplatform.providers import LlmChunk, LlmOptions
from voiceplatform.providers.base import ProviderBase, ProviderContext
from voiceplatform.wire import ChatMessage
from vp_llm.script_engine import DialogScript, DialogScriptError, ScriptState
from vp_llm.script_loading import parse_script

log = structlog.get_logger("vp_llm.script")

DIALOG_WARNINGS = Counter(
    "vp_llm_dialog_warnings_total", "dialog.json problems that do not stop the robot, by kind", ["kind"]
)


class ScriptDialog(ProviderBase):
    name = "script"

    @classmethod
    def from_context(cls, ctx: ProviderContext) -> Self:
        return cls(ctx.require_robot(cls.name))

    @classmethod
    def check(cls, robot: RobotConfig) -> list[str]:
        """The dialog file's problems, each as ``<file>: <where>: <problem>`` (no encoder is loaded)."""
        name = robot.settings.dialog_file
        try:
            data = json.loads(robot.dialog_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return [f"{name}: missing (llm provider 'script' answers from it)"]
        except UnicodeDecodeError:
            return [f"{name}: not UTF-8 text"]
        except json.JSONDecodeError as exc:
            return [f"{name}: line {exc.lineno}: not valid JSON: {exc.msg}"]
        try:
            parse_script(data, name, robot.settings.language)
        except DialogScriptError as exc:
            return [f"{name}: {problem}" for problem in exc.problems]
        return []

    def __init__(self, robot: RobotConfig) -> None:
        self.script = DialogScript.load(robot.dialog_path, robot.settings.language)
        for kind, text in self.script.warnings:
            DIALOG_WARNINGS.labels(kind).inc()
            log.warning("script.dialog_warning", robot=robot.name, kind=kind, problem=text)
        if self.script.use_meaning:
            # load the encoder and embed this robot's examples before the first caller needs them
            self.script.index.warm()

    async def stream_complete(
        self, messages: Sequence[ChatMessage], options: LlmOptions
    ) -> AsyncIterator[LlmChunk]:
        if options.event == "dtmf":
            user_text = options.keys
        elif options.event == "no_input":
            user_text = ""
        else:
            user_text = _last_user_text(messages)
        state = ScriptState.decode(options.dialog_state)
        prompt = options.prompt_id or state.prompt
        step = await self.script.respond(state, prompt, user_text, options.event)
        words = fill(step.reply, options.variables).split()
        for i, word in enumerate(words):
            yield LlmChunk(text=word if i == len(words) - 1 else word + " ")
            # a checkpoint per word keeps the engine instant yet cancellable, like a real stream
            await asyncio.sleep(0)
        log.info(
            "script.decided",
            how=step.how,
            intent=step.intent,
            matched=step.matched,
            score=round(step.score, 3),
            state=step.state,
        )
        yield LlmChunk(
            dialog_state=state.after(step, prompt).encode(),
            end_call=step.end_call,
            transfer_to=step.transfer_to,
            meta={"matched": step.matched, "how": step.how, "intent": step.intent},
        )

    async def aclose(self) -> None:
        return None


def _last_user_text(messages: Sequence[ChatMessage]) -> str:
    return next((m.content for m in reversed(messages) if m.role == "user"), "")
