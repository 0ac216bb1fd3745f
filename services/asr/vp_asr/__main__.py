"""``python -m vp_asr``: the ASR worker."""

from __future__ import annotations

from voiceplatform.runtime import service_main
from vp_asr.app import AsrService
from vp_asr.settings import AsrSettings


def build() -> tuple[AsrService, AsrSettings]:
    settings = AsrSettings()
    return AsrService(settings), settings


def main() -> None:
    service_main(build)


if __name__ == "__main__":
    main()
