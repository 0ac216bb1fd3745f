"""`vp check` and `vp new robot`: catch a robot's mistakes before a call.

A robot is named by its folder (``robots/x``, any path) or by a bare name, looked up in the robots
folder the platform serves: ``ROBOTS_DIR``, else the one `vp up` wrote into ``.vp/robots_dir``, else
``robots``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from voiceplatform.cli.up import ROBOTS_DIR_FILE
from voiceplatform.config.robot_check import CheckResult, check_robot, folder_label
from voiceplatform.config.robot_registry import ROBOT_NAME

DEFAULT_WORKDIR = Path(".vp")
# not carried into a new robot: the template's call logs and its keys (a new robot gets its own)
NOT_COPIED = frozenset({"logs", ".env"})


def served_robots_dir(workdir: Path = DEFAULT_WORKDIR) -> Path:
    """The robots folder the platform's services load: ``ROBOTS_DIR`` when set, else the one `vp up`
    recorded in its work dir, else ``robots``."""
    if os.environ.get("ROBOTS_DIR"):
        return Path(os.environ["ROBOTS_DIR"])
    served = workdir / ROBOTS_DIR_FILE
    if served.is_file():
        return Path(served.read_text(encoding="utf-8").strip())
    return Path("robots")


def is_bare_name(robot: str) -> bool:
    return "/" not in robot and os.sep not in robot and robot not in (".", "..")


def robot_folder(robot: str, robots_dir: Path | None = None) -> Path:
    """``robots/x`` or any path as given; a bare name inside the served robots folder."""
    if is_bare_name(robot):
        return (robots_dir or served_robots_dir()) / robot
    return Path(robot)


def callable_robot(robot: str, phone: bool = False) -> tuple[str, list[str]]:
    """The robot name to ask the gateway for, and why not (one line each) when it cannot be called.

    A bare name is gateway-web's business (it answers an unknown one); gateway-fs would route an
    unknown name by the dialed number instead, so for ``phone`` it must be in the served folder. A
    folder must be a robot of the folder the services load (``vp up --robots``): the call reaches
    exactly that robot, never a namesake.
    """
    if is_bare_name(robot):
        served = served_robots_dir()
        if phone and served.is_dir() and not (served / robot / "config.json").is_file():
            return robot, [f"no robot {robot!r} in {served}"]
        return robot, []
    folder = Path(robot)
    if not (folder / "config.json").is_file():
        return folder.name, [f"{robot}: no robot there (no config.json)"]
    served = served_robots_dir()
    if folder.resolve().parent != served.resolve():
        return folder.name, [
            f"{robot} is not in the robots folder the platform serves ({served}): start it with "
            f"`vp up --robots {folder_label(folder.resolve().parent)}`, or copy the robot there"
        ]
    return folder.name, check_robot(folder, author=False).lines()


def report(result: CheckResult) -> int:
    """Print one line per problem (exit 1), or one OK line (exit 0)."""
    if result.problems:
        for line in result.lines():
            print(line)
        count = len(result.problems)
        print(f"{result.label}: {count} problem{'s' if count > 1 else ''}", file=sys.stderr)
        return 1
    print(f"{result.label}: OK ({'; '.join(result.summary)})")
    return 0


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "robots", nargs="*", help="robot folders or names (default: every robot of the robots folder)"
    )


def run_check(args: argparse.Namespace) -> int:
    targets = list(args.robots)
    if not targets:
        robots_dir = served_robots_dir()
        targets = sorted(str(p) for p in robots_dir.glob("*/config.json")) if robots_dir.is_dir() else []
        targets = [str(Path(t).parent) for t in targets]
        if not targets:
            print(f"vp check: no robots in {robots_dir}", file=sys.stderr)
            return 2
    worst = 0
    for target in targets:
        folder = robot_folder(target)
        if not (folder / "config.json").is_file():
            print(f"{folder_label(folder)}: no robot here (no config.json)")
            worst = max(worst, 1)
            continue
        worst = max(worst, report(check_robot(folder)))
    return worst


def add_new_arguments(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="kind", required=True)
    robot = kinds.add_parser("robot", help="a robot folder copied from a template robot, then checked")
    robot.add_argument("name", help="the new robot's name (its folder in the robots folder), or a path")
    robot.add_argument(
        "--from", dest="template", required=True, help="the robot to start from: a name in robots/ or a path"
    )


def run_new(args: argparse.Namespace) -> int:
    template = robot_folder(args.template)
    target = robot_folder(args.name)
    name = target.name
    if not ROBOT_NAME.match(name):
        print(f"vp new robot: {name!r} is not a robot name (letters, digits, _ and -)", file=sys.stderr)
        return 2
    if not (template / "config.json").is_file():
        print(f"vp new robot: no robot at {folder_label(template)} (no config.json)", file=sys.stderr)
        return 2
    if target.exists():
        print(f"vp new robot: {folder_label(target)} exists; not overwriting it", file=sys.stderr)
        return 1
    shutil.copytree(template, target, ignore=lambda _dir, names: [n for n in names if n in NOT_COPIED])
    changed = _make_own(target / "config.json", name, target.parent)
    print(
        f"created {folder_label(target)} from {folder_label(template)}" + (f" ({changed})" if changed else "")
    )
    if (template / ".env").is_file():
        print(f"  the template's .env (keys) was not copied: give {name} its own .env if it needs keys")
    return report(check_robot(target))


def _make_own(config_file: Path, name: str, robots_dir: Path) -> str:
    """Rewrite what must differ between two robots: its name, its phone numbers (a number reaches
    one robot), its port. Returns what changed."""
    config = json.loads(config_file.read_text(encoding="utf-8"))
    changed = []
    if config.get("name"):
        config["name"] = name
        changed.append("name")
    if config.get("phone_numbers"):
        config["phone_numbers"] = []
        changed.append("phone_numbers emptied")
    if "ws_port" in config:
        ports = []
        for other in robots_dir.glob("*/config.json"):
            try:
                port = json.loads(other.read_text(encoding="utf-8")).get("ws_port")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(port, int):
                ports.append(port)
        config["ws_port"] = max(ports, default=5199) + 1
        changed.append(f"ws_port {config['ws_port']}")
    if changed:
        config_file.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return ", ".join(changed)
