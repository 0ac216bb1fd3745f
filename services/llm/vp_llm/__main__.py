"""``python -m vp_llm``: run the LLM service."""

from __future__ import annotations

from voiceplatform.runtime import service_main
from vp_llm.app import build

if __name__ == "__main__":
    service_main(build)
