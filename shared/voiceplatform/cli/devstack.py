"""The development stack (``voiceplatform_devstack``, shared/devstack; docs/devstack.md).

`vp up`'s embedded servers and `vp call --phone`'s FreeSWITCH peer live in a distribution of their
own that the product does not depend on (production images carry none of it). The commands that
need it import it through ``required_for``, which turns its absence into what to install.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

PACKAGE = "voiceplatform_devstack"
INSTALL = "pip install ./shared/devstack (from the repository root; scripts/setup.sh installs it)"


class DevStackMissing(SystemExit):
    """A command that needs the development stack, run where it is not installed."""


def missing_message(what: str) -> str:
    return f"{what} needs the development stack, which is not installed: {INSTALL}"


@contextlib.contextmanager
def required_for(what: str) -> Iterator[None]:
    """Imports inside the block that fail on the development stack raise ``DevStackMissing`` saying
    ``what`` needs it and how to install it; any other missing module is raised as it is."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != PACKAGE:
            raise
        raise DevStackMissing(missing_message(what)) from exc
