"""One construction convention and one lifecycle for every provider class (asr, llm, tts, realtime).

A provider class derives from :class:`ProviderBase`, says how widely one instance is shared
(``scope``) and builds itself from a :class:`ProviderContext` in ``from_context``; the registry and
the services call these, never probe for optional methods. The defaults do nothing, so a provider
overrides only the hooks it needs (a local model's ``preload``, a process pool's ``start``/``ready``,
an HTTP client's ``aclose``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from voiceplatform.providers.errors import ProviderError

if TYPE_CHECKING:
    from voiceplatform.config import RobotConfig
    from voiceplatform.providers.keypool import KeyHealthStore

# "process": one instance per process (a local engine); "robot": one per robot (its keys and
# options; rebuilt when the robot's configuration reloads); "call": one per call
Scope = Literal["process", "robot", "call"]


@dataclass(frozen=True, slots=True)
class ProviderContext:
    """Everything a provider may be built from; each provider takes what it needs.

    ``robot`` is None for a process-wide provider, or when the robot's configuration failed to load.
    ``options`` is the stage's configuration section as the service resolved it (e.g. the robot's
    ``AsrConfig`` with its vocabulary); ``settings`` the service's own settings (local engines).
    """

    robot: RobotConfig | None = None
    options: Any = None
    settings: Any = None
    key_health: KeyHealthStore | None = None

    def require_robot(self, provider: str) -> RobotConfig:
        """The robot, for a provider built from its keys and options."""
        if self.robot is None:
            problem = "needs the robot's configuration, which did not load"
            raise ProviderError(provider, problem, retryable=False)
        return self.robot


class ProviderBase:
    name: str  # set by every subclass
    scope: ClassVar[Scope] = "robot"

    @classmethod
    def from_context(cls, ctx: ProviderContext) -> Self:
        """Build an instance; raise ``ProviderError`` (no secret in it) for a configuration problem."""
        raise NotImplementedError(f"{cls.__name__}.from_context")

    @classmethod
    def preload(cls) -> None:
        """Blocking, run once per process in a thread before it takes calls (load a model)."""

    @classmethod
    def is_loaded(cls) -> bool:
        return True

    async def start(self) -> None:
        """Warm up (start worker processes); ``ProviderError`` when the engine is unusable here."""

    def ready(self) -> bool:
        return True

    def health(self) -> dict[str, Any]:
        return {}

    async def aclose(self) -> None:
        """Release what the instance holds (HTTP clients, processes)."""

    @classmethod
    def check(cls, robot: RobotConfig) -> list[str]:
        """What stops this provider from serving ``robot`` (options, keys, files), one line each.

        The default builds a per-robot provider and drops it (construction validates its options and
        keys; nothing connects before the first call); a local engine has nothing robot-specific
        to check. A provider whose construction is costly (loads a model) overrides this.
        """
        if cls.scope != "robot":
            return []
        from voiceplatform.config import RobotConfigError

        try:
            cls.from_context(ProviderContext(robot=robot))
        except RobotConfigError as exc:
            return list(exc.problems)
        except (ProviderError, ValueError) as exc:
            return [str(exc)]
        return []

    def for_robot(self, robot: RobotConfig | None) -> ProviderBase:
        """The instance to use for ``robot``: itself, or a view with the robot's options bound."""
        return self
