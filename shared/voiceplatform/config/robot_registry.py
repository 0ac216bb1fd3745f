"""Robots by name from one folder, checked at every load and reloaded when any file of theirs changes.

Every service gets its robots here. A load runs the checks of ``vp check`` (``robot_check``) but the
author-only ones (keys belong to the worker that uses them) and refuses a robot with problems.

A robot with problems gets no new calls: the gateways ask ``get(name, new_call=True)`` when a call
arrives and refuse it with the problems. Calls already in progress go on: the workers ask
``get(name)`` per turn and get the last good version (a live edit that breaks a serving robot never
cuts a call short), or, when this process never saw a good one, the version that loaded despite its
problems (its stages then fail a turn with their own stage errors); a folder that does not load at
all (config.json broken) and never did is refused everywhere. Each new broken version is logged
once (``robot.invalid`` with every problem) and counted.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import structlog
from prometheus_client import Counter

from voiceplatform.config import robot as robot_module
from voiceplatform.config.robot import RobotConfig, RobotConfigError

log = structlog.get_logger("voiceplatform.config")
ROBOT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# written by the recorder (JSON call logs) inside the robot's folder: not part of the robot
NOT_THE_ROBOT = frozenset({"logs"})
MAX_DEPTH = 4  # robot/prompts/x.txt is 1 deep; a symlink loop must not walk forever
ROBOT_LOADS = Counter("vp_robot_loads_total", "Robot folder (re)loads, by outcome", ["outcome"])

Fingerprint = tuple[tuple[str, int, int], ...]


def folder_fingerprint(folder: Path | str) -> Fingerprint:
    """Every file of the robot (name, size, mtime), so a change to any of them reloads it.

    Costs one ``scandir`` per sub-folder: cheap next to a turn. ``FileNotFoundError`` without a
    config.json (no robot there).
    """
    top = os.fspath(folder)  # str paths: this runs several times per turn, pathlib costs a third
    os.stat(os.path.join(top, "config.json"))
    entries: list[tuple[str, int, int]] = []
    stack = [(top, "", 0)]
    while stack:
        directory, prefix, depth = stack.pop()
        with os.scandir(directory) as it:
            for entry in it:
                name = prefix + entry.name
                if entry.is_dir(follow_symlinks=True):
                    if not (prefix == "" and entry.name in NOT_THE_ROBOT) and depth < MAX_DEPTH:
                        stack.append((entry.path, name + "/", depth + 1))
                    continue
                try:
                    st = entry.stat()
                except FileNotFoundError:  # removed while we looked: the next get sees it
                    continue
                entries.append((name, st.st_size, st.st_mtime_ns))
    return tuple(sorted(entries))


@dataclass
class _Entry:
    stamp: Fingerprint
    current: RobotConfig | None  # the version on disk, when it passed the checks
    error: RobotConfigError | None  # why the version on disk was refused
    last_good: RobotConfig | None
    refused: RobotConfig | None = None  # the version on disk, loaded but with problems


def check_loaded(robot: RobotConfig) -> RobotConfigError | None:
    """The problems a service refuses a robot for (``robot_check``, author-only checks aside)."""
    from voiceplatform.config.robot_check import check_robot

    result = check_robot(robot.path, author=False, robot=robot)
    return RobotConfigError(robot.name, [p.render() for p in result.problems]) if result.problems else None


class RobotRegistry:
    """Robots by name from one folder, loaded once and reused until a file in their folder changes."""

    def __init__(self, robots_dir: Path | str) -> None:
        self.robots_dir = Path(robots_dir)
        self._cache: dict[str, _Entry] = {}

    def get(self, name: str, *, new_call: bool = False) -> RobotConfig:
        """The robot ``name``; ``new_call``: refuse a broken version even if an older one served."""
        if not ROBOT_NAME.match(name):
            raise RobotConfigError(name, ["invalid robot name"])
        folder = os.path.join(self.robots_dir, name)
        try:
            stamp = folder_fingerprint(folder)
        except (FileNotFoundError, NotADirectoryError):
            raise RobotConfigError(name, [f"no robot {name!r} in {self.robots_dir}"]) from None
        entry = self._cache.get(name)
        if entry is None or entry.stamp != stamp:
            entry = self._load(name, Path(folder), stamp, entry.last_good if entry else None)
        if entry.current is not None:
            return entry.current
        assert entry.error is not None
        kept = entry.last_good or entry.refused
        if kept is None or new_call:
            raise entry.error
        return kept

    def _load(self, name: str, folder: Path, stamp: Fingerprint, last_good: RobotConfig | None) -> _Entry:
        robot: RobotConfig | None = None
        try:
            robot = robot_module.load_robot(folder)
            error = check_loaded(robot)
        except RobotConfigError as exc:
            error = exc
        if error is not None:
            ROBOT_LOADS.labels("refused").inc()
            kept = "the last good version" if last_good else "this version" if robot else "nothing"
            log.error("robot.invalid", robot=name, problems=error.problems, calls_in_progress_get=kept)
            entry = _Entry(stamp, None, error, last_good, robot)
        else:
            assert robot is not None
            ROBOT_LOADS.labels("loaded").inc()
            if last_good is not None:
                log.info("robot.reloaded", robot=name)
            entry = _Entry(stamp, robot, None, robot)
        self._cache[name] = entry
        return entry

    def load_all(self) -> list[str]:
        """Load and check every robot now (a gateway at start, so a first call does not wait for
        it); the names refused, each logged with its problems."""
        refused = []
        for name in self.names():
            try:
                self.get(name, new_call=True)
            except RobotConfigError:
                refused.append(name)
        return refused

    def names(self) -> list[str]:
        if not self.robots_dir.is_dir():
            return []
        return sorted(p.name for p in self.robots_dir.iterdir() if (p / "config.json").is_file())
