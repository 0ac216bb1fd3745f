"""``python -m vp_router``: run the prompt-router service."""

from __future__ import annotations

from voiceplatform.runtime import service_main
from vp_router.app import build

if __name__ == "__main__":
    service_main(build)
