"""Deterministic dialogue engine behind ``llm.provider = "script"`` (the offline default brain).

A robot's ``dialog.json``::

    {
      "start": "main",
      "states": {
        "main": {
          "intents": [
            {"keywords": ["доставка"], "reply": "Доставляем за один день.", "next": "main"},
            {"keywords": ["корм"], "prompt": "pets", "reply": "Корм для собак есть.", "next": "main"}
          ],
          "fallback": "Простите, не поняла. Повторите, пожалуйста.",
          "fallback_by_prompt": {"pets": "Расскажите о своём питомце."},
          "fallback_next": "main"
        }
      },
      "global": [{"keywords": ["до свидания"], "reply": "Всего доброго!", "end_call": true}]
    }

Matching: keywords use ``voiceplatform.text`` (the router's inflection-tolerant matcher). Intents
carrying ``"prompt"`` apply only while that prompt (topic) is active and win over generic ones;
within each group the current state's intents come before the global ones, in file order. ``next``
defaults to the current state. No intent → ``fallback_by_prompt[prompt]`` or ``fallback``.

State between turns is a JSON string ``{"state": "<name>", "prompt": "<prompt id>"}``: the
provider owns ``state``; the prompt-router writes the active ``prompt`` into it on every request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voiceplatform.text import Keyword, tokenize


class DialogScriptError(ValueError):
    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Intent:
    keywords: tuple[Keyword, ...]
    reply: str
    next: str | None = None
    end_call: bool = False
    prompt: str | None = None


@dataclass(frozen=True)
class DialogNode:
    name: str
    intents: tuple[Intent, ...]
    fallback: str
    fallback_by_prompt: dict[str, str] = field(default_factory=dict)
    fallback_next: str | None = None


@dataclass(frozen=True)
class Step:
    """The engine's answer to one user message."""

    reply: str
    state: str
    end_call: bool
    matched: str  # the keyword phrase, or "" for a fallback


@dataclass(frozen=True)
class ScriptState:
    state: str = ""
    prompt: str = ""

    @classmethod
    def decode(cls, raw: str) -> ScriptState:
        """Unknown or broken state starts over (never fails a turn)."""
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            return cls()
        if not isinstance(data, dict):
            return cls()
        return cls(state=str(data.get("state") or ""), prompt=str(data.get("prompt") or ""))

    def encode(self) -> str:
        return json.dumps({"state": self.state, "prompt": self.prompt}, ensure_ascii=False)


def _problems_of_intents(where: str, raw: Any, problems: list[str]) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        problems.append(f"{where}: must be a list of intents")
        return []
    good: list[dict[str, Any]] = []
    for i, intent in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(intent, dict):
            problems.append(f"{at}: must be an object")
            continue
        unknown = set(intent) - {"keywords", "reply", "next", "end_call", "prompt"}
        if unknown:
            problems.append(f"{at}: unknown keys {sorted(unknown)}")
        kws = intent.get("keywords")
        if not isinstance(kws, list) or not kws or not all(isinstance(k, str) and tokenize(k) for k in kws):
            problems.append(f"{at}.keywords: must be a non-empty list of words")
            continue
        if not isinstance(intent.get("reply"), str) or not intent["reply"].strip():
            problems.append(f"{at}.reply: must be non-empty text")
            continue
        good.append(intent)
    return good


def _intent(raw: dict[str, Any]) -> Intent:
    return Intent(
        keywords=tuple(Keyword.parse(k) for k in raw["keywords"]),
        reply=raw["reply"].strip(),
        next=raw.get("next"),
        end_call=bool(raw.get("end_call", False)),
        prompt=raw.get("prompt"),
    )


class DialogScript:
    def __init__(self, start: str, nodes: dict[str, DialogNode], global_intents: tuple[Intent, ...]) -> None:
        self.start = start
        self.nodes = nodes
        self.global_intents = global_intents

    @classmethod
    def from_dict(cls, data: Any, source: str = "dialog.json") -> DialogScript:
        """Validate everything and report every problem at once."""
        problems: list[str] = []
        if not isinstance(data, dict):
            raise DialogScriptError(source, ["must hold a JSON object"])
        states = data.get("states")
        if not isinstance(states, dict) or not states:
            raise DialogScriptError(source, ["states: must be a non-empty object"])
        start = data.get("start")
        if start not in states:
            problems.append(f"start: {start!r} is not a state")
        targets: list[tuple[str, Any]] = []
        nodes: dict[str, DialogNode] = {}
        for name, node in states.items():
            if not isinstance(node, dict):
                problems.append(f"states.{name}: must be an object")
                continue
            intents = _problems_of_intents(f"states.{name}.intents", node.get("intents", []), problems)
            fallback = node.get("fallback")
            if not isinstance(fallback, str) or not fallback.strip():
                problems.append(f"states.{name}.fallback: must be non-empty text")
                fallback = ""
            by_prompt = node.get("fallback_by_prompt", {})
            if not isinstance(by_prompt, dict) or not all(isinstance(v, str) for v in by_prompt.values()):
                problems.append(f"states.{name}.fallback_by_prompt: must map prompt ids to text")
                by_prompt = {}
            targets += [(f"states.{name}.intents[{i}].next", it.get("next")) for i, it in enumerate(intents)]
            targets.append((f"states.{name}.fallback_next", node.get("fallback_next")))
            nodes[name] = DialogNode(
                name=name,
                intents=tuple(_intent(it) for it in intents),
                fallback=fallback.strip(),
                fallback_by_prompt={k: v.strip() for k, v in by_prompt.items()},
                fallback_next=node.get("fallback_next"),
            )
        global_raw = _problems_of_intents("global", data.get("global", []), problems)
        targets += [(f"global[{i}].next", it.get("next")) for i, it in enumerate(global_raw)]
        for where, target in targets:
            if target is not None and target not in states:
                problems.append(f"{where}: {target!r} is not a state")
        if problems:
            raise DialogScriptError(source, problems)
        return cls(str(start), nodes, tuple(_intent(it) for it in global_raw))

    @classmethod
    def load(cls, path: Path) -> DialogScript:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DialogScriptError(str(path), ["file not found"]) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DialogScriptError(str(path), [f"not valid JSON: {exc}"]) from None
        return cls.from_dict(data, str(path))

    def step(self, state: str, prompt: str, user_text: str) -> Step:
        node = self.nodes.get(state) or self.nodes[self.start]
        tokens = tokenize(user_text)
        everywhere = node.intents + self.global_intents
        topical = [it for it in everywhere if it.prompt is not None and it.prompt == prompt]
        generic = [it for it in everywhere if it.prompt is None]
        for intent in topical + generic:
            for keyword in intent.keywords:
                if keyword.matches(tokens):
                    return Step(intent.reply, intent.next or node.name, intent.end_call, keyword.phrase)
        reply = node.fallback_by_prompt.get(prompt) or node.fallback
        return Step(reply, node.fallback_next or node.name, False, "")
