"""Topic routing (seed "Voice2Voice"): every user message is analysed and may switch the prompt.

Rules come from the robot's ``router.rules`` in order. First keywords: the first rule with a
matching keyword wins (matching tolerates Russian inflection, see ``voiceplatform.text``). Then,
for rules with ``examples``, meaning: the phrase goes through the sentence encoder
(``voiceplatform.meaning``) and the rule of its nearest example wins when the similarity reaches
``router.min_similarity`` ("у меня щенок", "пёсик" → pets without those words being keywords).
Nothing found keeps the current prompt, so a follow-up question without a topic stays on topic.
Number words become digits before either match. Without the encoder, keywords alone decide.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from prometheus_client import Counter

from voiceplatform import meaning
from voiceplatform.config import RobotConfig
from voiceplatform.numerals import words_to_digits
from voiceplatform.text import KeywordMatcher

log = structlog.get_logger("vp_router")

ROUTE_DECISIONS = Counter("vp_router_topic_decisions_total", "Topic decisions, by how", ["how"])


@dataclass(frozen=True, slots=True)
class Route:
    prompt_id: str
    matched: str  # the keyword phrase or nearest example that decided it, "" when the prompt was kept
    how: str = "keyword"  # keyword | meaning | kept
    score: float = 0.0

    def switched_from(self, current: str) -> bool:
        return bool(self.matched) and self.prompt_id != current


class PromptRoutes:
    def __init__(self, robot: RobotConfig) -> None:
        cfg = robot.settings.router
        self.default_prompt = cfg.default_prompt
        self.min_similarity = cfg.min_similarity
        self.language = robot.settings.language
        self.matcher: KeywordMatcher[str] = KeywordMatcher()
        for rule in cfg.rules:
            if rule.keywords:
                self.matcher.add(rule.prompt, [words_to_digits(k, self.language) for k in rule.keywords])
        pairs = [(rule.prompt, ex) for rule in cfg.rules for ex in rule.examples]
        self.index: meaning.ExampleIndex[str] = meaning.ExampleIndex(pairs, self.language)
        if len(self.index):
            self.index.warm()  # embed this robot's examples before its first caller needs them

    def keep(self, current: str) -> Route:
        return Route(current or self.default_prompt, "", "kept")

    def by_keywords(self, text: str) -> Route | None:
        found = self.matcher.match(words_to_digits(text, self.language))
        return Route(found[0], found[1]) if found is not None else None

    async def classify(self, text: str) -> Route | None:
        """The topic ``text`` is about, or None when nothing fits (the caller keeps the prompt)."""
        route = self.by_keywords(text)
        if route is None and len(self.index):
            try:
                match = await self.index.anearest(text)
            except meaning.EncoderUnavailable as exc:
                log.warning("router.meaning_unavailable", error=str(exc))
                match = None
            if match is not None and match.score >= self.min_similarity:
                route = Route(match.label, match.example, "meaning", match.score)
        ROUTE_DECISIONS.labels(route.how if route is not None else "kept").inc()
        return route

    async def route(self, current: str, text: str) -> Route:
        return await self.classify(text) or self.keep(current)


class RouteCache:
    """Compiled routes per robot, rebuilt when the registry hands out a reloaded config."""

    def __init__(self) -> None:
        self._routes: dict[str, tuple[RobotConfig, PromptRoutes]] = {}

    def get(self, robot: RobotConfig) -> PromptRoutes:
        cached = self._routes.get(robot.name)
        if cached is not None and cached[0] is robot:
            return cached[1]
        routes = PromptRoutes(robot)
        self._routes[robot.name] = (robot, routes)
        return routes
