"""Deterministic dialogue engine behind ``llm.provider = "script"`` (the offline default brain).

A robot's ``dialog.json``::

    {
      "start": "main",
      "min_similarity": 0.5,
      "transfer_to": "operators",
      "states": {
        "main": {
          "intents": [
            {"keywords": ["доставка"], "examples": ["сколько везти будете", "когда привезете"],
             "reply": "Доставляем за один день.", "next": "main"},
            {"keywords": ["корм"], "prompt": "pets", "reply": "Корм для собак есть.", "next": "main"}
          ],
          "fallback": "Простите, не поняла. Повторите, пожалуйста.",
          "fallback_by_prompt": {"pets": "Расскажите о своём питомце."},
          "fallback_next": "main"
        }
      },
      "global": [{"keywords": ["спасибо"], "reply": "Пожалуйста!"}],
      "builtins": {"operator": {"reply": "Соединяю."}, "no_input": {"limit": 2}}
    }

Which intents apply: those of the current state and the global ones, plus the built-in intents
(repeat, operator, goodbye; see ``script_loading``). Intents carrying ``"prompt"`` apply only while
that prompt (topic) is active. Number words in the caller's text become digits first.

Matching, per caller phrase:

1. keywords (the exact fast path, inflection-tolerant, see ``voiceplatform.text``). One intent
   hit: it wins. Several (``"сколько стоит доставка"`` hits prices and delivery): the one whose
   examples are nearest in meaning wins, so the robot answers what was asked;
2. no keyword: the nearest example by meaning (``voiceplatform.meaning``), if its similarity is at
   least ``min_similarity``;
3. nothing: the state's fallback ("не понял"), only after such a real miss.

``dtmf`` turns (the caller pressed keys; the text is the digits) match only the intents' ``"dtmf"``
key sequences, exactly, in the same priority order; no match says the fallback. An intent's own
``"transfer_to"`` hands the caller over after its reply, like the built-in operator intent.

``no_input`` turns (the caller stayed silent) re-prompt; after ``builtins.no_input.limit`` silences
in a row the robot says goodbye and hangs up. Without the encoder (not installed, failed) matching
goes on with keywords alone.

State between turns is a JSON string ``{"state", "prompt", "last", "silences"}``: the provider owns
it; the prompt-router writes the active ``prompt`` into it on every request. Older state without the
last two keys still decodes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import Counter

from voiceplatform.meaning import EncoderUnavailable, ExampleIndex, Match
from voiceplatform.numerals import words_to_digits
from voiceplatform.text import tokenize
from vp_llm.script_loading import (
    Builtins,
    DialogNode,
    DialogScriptError,
    Intent,
    parse_script,
)

__all__ = ["DialogNode", "DialogScript", "DialogScriptError", "Intent", "ScriptState", "Step"]

log = structlog.get_logger("vp_llm.script")

DECISIONS = Counter("vp_llm_script_decisions_total", "Script engine decisions, by how", ["how"])
MEANING_FALLBACKS = Counter(
    "vp_llm_script_meaning_unavailable_total", "Turns matched by keywords only because the encoder failed"
)
# keyword phrases are short meaningful phrases too: they join the examples of their intent
KEYWORDS_AS_EXAMPLES = True
MINIMAL = {"start": "main", "states": {"main": {"fallback": "?"}}}
NO_INPUT = "builtin.no_input"


@dataclass(frozen=True)
class Step:
    """The engine's answer to one user message."""

    reply: str
    state: str
    end_call: bool
    matched: str  # the keyword phrase or nearest example, "" for a fallback
    how: str = "keyword"  # keyword | meaning | dtmf | fallback | no_input | repeat | operator
    intent: str = ""
    score: float = 0.0
    transfer_to: str = ""
    silences: int = 0
    remember: bool = True  # the reply is what "повторите" repeats next


@dataclass(frozen=True)
class ScriptState:
    state: str = ""
    prompt: str = ""
    last: str = ""  # the last reply worth repeating
    silences: int = 0  # no-input turns in a row

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
        silences = data.get("silences")
        return cls(
            state=str(data.get("state") or ""),
            prompt=str(data.get("prompt") or ""),
            last=str(data.get("last") or ""),
            silences=silences if isinstance(silences, int) and silences >= 0 else 0,
        )

    def encode(self) -> str:
        data = {"state": self.state, "prompt": self.prompt, "last": self.last, "silences": self.silences}
        return json.dumps(data, ensure_ascii=False)

    def after(self, step: Step, prompt: str) -> ScriptState:
        return ScriptState(step.state, prompt, step.reply if step.remember else self.last, step.silences)


class DialogScript:
    def __init__(
        self,
        start: str,
        nodes: dict[str, DialogNode],
        global_intents: tuple[Intent, ...],
        builtins: Builtins | None = None,
        min_similarity: float = 0.5,
        transfer_to: str = "",
        language: str = "ru",
        warnings: list[tuple[str, str]] | None = None,
    ) -> None:
        self.start = start
        self.nodes = nodes
        self.global_intents = global_intents
        self.builtins = builtins or parse_script(MINIMAL, "defaults").builtins
        self.min_similarity = min_similarity
        self.transfer_to = transfer_to
        self.language = language
        self.warnings = warnings or []
        self.intents: list[Intent] = [it for n in nodes.values() for it in n.intents]
        self.intents += [*global_intents, *self.builtins.intents]
        self._label = {id(it): i for i, it in enumerate(self.intents)}
        phrases: list[tuple[int, str]] = []
        for i, it in enumerate(self.intents):
            texts = list(it.examples) + ([k.phrase for k in it.keywords] if KEYWORDS_AS_EXAMPLES else [])
            phrases += [(i, t) for t in dict.fromkeys(texts)]
        self.index: ExampleIndex[int] = ExampleIndex(phrases, language)
        self.use_meaning = any(it.examples for it in self.intents)

    @classmethod
    def from_dict(cls, data: Any, source: str = "dialog.json", language: str = "ru") -> DialogScript:
        """Validate everything and report every problem at once."""
        spec = parse_script(data, source, language)
        return cls(
            spec.start,
            spec.nodes,
            spec.global_intents,
            spec.builtins,
            spec.min_similarity,
            spec.transfer_to,
            language,
            spec.warnings,
        )

    @classmethod
    def load(cls, path: Path, language: str = "ru") -> DialogScript:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DialogScriptError(str(path), ["file not found"]) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DialogScriptError(str(path), [f"not valid JSON: {exc}"]) from None
        return cls.from_dict(data, str(path), language)

    # ---- matching ------------------------------------------------------------------------------
    def node_of(self, state: str) -> DialogNode:
        return self.nodes.get(state) or self.nodes[self.start]

    def eligible(self, node: DialogNode, prompt: str) -> list[Intent]:
        """Intents that apply now, in priority order (topical, state, global, built-in)."""
        everywhere = [*node.intents, *self.global_intents]
        topical = [it for it in everywhere if it.prompt is not None and it.prompt == prompt]
        generic = [it for it in everywhere if it.prompt is None]
        return [*topical, *generic, *self.builtins.intents]

    def keyword_hits(self, user_text: str, intents: list[Intent]) -> list[tuple[Intent, str]]:
        tokens = tokenize(words_to_digits(user_text, self.language))
        hits: list[tuple[Intent, str]] = []
        for it in intents:
            phrase = it.keyword_hit(tokens)
            if phrase is not None:
                hits.append((it, phrase))
        return hits

    def step(self, state: str, prompt: str, user_text: str, last: str = "") -> Step:
        """Keywords only (no encoder): the first hit in priority order, else the fallback."""
        node = self.node_of(state)
        hits = self.keyword_hits(user_text, self.eligible(node, prompt))
        if hits:
            return self._reply(hits[0][0], node, "keyword", hits[0][1], 0.0, last)
        return self._miss(node, prompt)

    async def respond(self, st: ScriptState, prompt: str, user_text: str, event: str = "") -> Step:
        """One turn: keywords, then meaning; ``event="no_input"`` (or no text) re-prompts."""
        node = self.node_of(st.state or self.start)
        if event == "no_input" or not user_text.strip():
            step = self.no_input(node, st)
        elif event == "dtmf":
            step = self.pressed(node, st, prompt, user_text.strip())
        else:
            step = await self._understand(node, st, prompt, user_text)
        DECISIONS.labels(step.how).inc()
        return step

    async def _understand(self, node: DialogNode, st: ScriptState, prompt: str, user_text: str) -> Step:
        if not tokenize(user_text):
            return self._miss(node, prompt)  # noise without a word: nothing to match
        intents = self.eligible(node, prompt)
        hits = self.keyword_hits(user_text, intents)
        if len(hits) == 1 or (hits and not self.use_meaning):
            return self._reply(hits[0][0], node, "keyword", hits[0][1], 0.0, st.last)
        if not self.use_meaning:
            return self._miss(node, prompt)
        try:
            scores = await self.index.ascores(user_text)
        except EncoderUnavailable as exc:
            MEANING_FALLBACKS.inc()
            log.warning("script.meaning_unavailable", error=str(exc))
            return (
                self._reply(hits[0][0], node, "keyword", hits[0][1], 0.0, st.last)
                if hits
                else self._miss(node, prompt)
            )
        if hits:
            # several intents hit by keywords: the one nearest in meaning answers what was asked
            best = max(hits, key=lambda h: self._score(scores, h[0]))
            return self._reply(best[0], node, "keyword", best[1], self._score(scores, best[0]), st.last)
        match = self._nearest(scores, intents)
        if match is None or match.score < self.min_similarity:
            return self._miss(node, prompt, match)
        return self._reply(self.intents[match.label], node, "meaning", match.example, match.score, st.last)

    def pressed(self, node: DialogNode, st: ScriptState, prompt: str, keys: str) -> Step:
        """The caller pressed ``keys``: the eligible intent listing that sequence, else the fallback."""
        for intent in self.eligible(node, prompt):
            if keys in intent.dtmf:
                return self._reply(intent, node, "dtmf", keys, 1.0, st.last)
        return self._miss(node, prompt)

    def _score(self, scores: dict[int, Match[int]], intent: Intent) -> float:
        match = scores.get(self._label[id(intent)])
        return match.score if match is not None else -1.0

    def _nearest(self, scores: dict[int, Match[int]], intents: list[Intent]) -> Match[int] | None:
        allowed = {self._label[id(it)] for it in intents}
        return next((m for label, m in scores.items() if label in allowed), None)

    def _reply(
        self, intent: Intent, node: DialogNode, how: str, matched: str, score: float, last: str
    ) -> Step:
        nxt = intent.next or node.name
        if intent.builtin == "repeat":
            reply = last or self.builtins.repeat_empty
            return Step(reply, node.name, False, matched, "repeat", intent.name, score, remember=False)
        if intent.builtin == "operator":
            # without a destination the caller hears that nobody is available, and the talk goes on
            reply = intent.reply if self.transfer_to else self.builtins.operator_unavailable
            return Step(reply, nxt, False, matched, "operator", intent.name, score, self.transfer_to)
        return Step(intent.reply, nxt, intent.end_call, matched, how, intent.name, score, intent.transfer_to)

    def _miss(self, node: DialogNode, prompt: str, near: Match[int] | None = None) -> Step:
        reply = node.fallback_by_prompt.get(prompt) or node.fallback
        score = near.score if near is not None else 0.0
        return Step(reply, node.fallback_next or node.name, False, "", "fallback", "", score)

    def no_input(self, node: DialogNode, st: ScriptState) -> Step:
        silences = st.silences + 1
        b = self.builtins
        if silences >= b.no_input_limit:
            return Step(b.no_input_goodbye, node.name, True, "", "no_input", NO_INPUT, silences=silences)
        return Step(
            b.no_input_reply, node.name, False, "", "no_input", NO_INPUT, silences=silences, remember=False
        )
