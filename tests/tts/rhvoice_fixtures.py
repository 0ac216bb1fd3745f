"""The real RHVoice library for tests: skipped (with the reason) only where it is not installed.

scripts/setup.sh installs it (scripts/install-rhvoice.sh), so the test command has it; under CI
(CI=true) a missing library fails instead of skipping, so the provider's tests cannot vanish.
"""

from __future__ import annotations

import os

import pytest

from vp_tts.providers.rhvoice import RhvoiceTts
from vp_tts.providers.rhvoice_engine import RhvoiceEngine, RhvoiceUnavailable
from vp_tts.settings import TtsSettings


def require_engine(settings: TtsSettings) -> RhvoiceEngine:
    try:
        return RhvoiceTts(settings).engine()
    except RhvoiceUnavailable as exc:
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(f"RHVoice must be installed in CI (scripts/install-rhvoice.sh): {exc.reason}")
        pytest.skip(f"RHVoice is not installed here: {exc.reason}")
