"""``python -m vp_recorder``: run the recorder service."""

from __future__ import annotations

from voiceplatform.runtime import service_main
from vp_recorder.app import RecorderService
from vp_recorder.settings import RecorderSettings


def build() -> tuple[RecorderService, RecorderSettings]:
    settings = RecorderSettings()
    return RecorderService(settings), settings


if __name__ == "__main__":
    service_main(build)
