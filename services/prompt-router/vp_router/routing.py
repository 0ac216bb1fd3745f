"""Keyword routing (seed 004): every user message is analysed; a topic keyword switches the prompt.

Rules come from the robot's ``router.rules`` in order; the first rule with a matching keyword wins
(matching tolerates Russian inflection, see ``voiceplatform.text``). No match keeps the current
prompt, so a follow-up question without keywords stays on topic.
"""

from __future__ import annotations

from dataclasses import dataclass

from voiceplatform.config import RobotConfig
from voiceplatform.text import KeywordMatcher


@dataclass(frozen=True, slots=True)
class Route:
    prompt_id: str
    matched: str  # the keyword phrase that decided it, "" when the prompt was kept

    def switched_from(self, current: str) -> bool:
        return bool(self.matched) and self.prompt_id != current


class PromptRoutes:
    def __init__(self, robot: RobotConfig) -> None:
        self.default_prompt = robot.settings.router.default_prompt
        self.matcher: KeywordMatcher[str] = KeywordMatcher()
        for rule in robot.settings.router.rules:
            self.matcher.add(rule.prompt, rule.keywords)

    def route(self, current: str, text: str) -> Route:
        found = self.matcher.match(text)
        if found is None:
            return Route(current or self.default_prompt, "")
        return Route(found[0], found[1])


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
