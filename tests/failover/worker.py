"""A vad or asr worker process for the failover tests and bench: ``python -m tests.failover.worker
vad|asr|asr-whisper`` (NATS_URL, ROBOTS_DIR, VP_INSTANCE_ID from the environment). The ASR knows the test-only
``span`` engine; no model is preloaded."""

from __future__ import annotations

import sys

from voiceplatform.providers import ProviderRegistry
from voiceplatform.runtime import service_main


def main(role: str) -> None:
    if role == "vad":
        from vp_vad.app import VadService
        from vp_vad.settings import VadSettings

        vad_settings = VadSettings()  # VP_PRELOAD_SILERO / VP_PRELOAD_EOT from the environment
        service_main(lambda: (VadService(vad_settings), vad_settings))
    elif role == "asr-whisper":  # the product's ASR with whisper preloaded (bench: heartbeats under load)
        from vp_asr.app import AsrService
        from vp_asr.settings import AsrSettings

        whisper_settings = AsrSettings()
        service_main(lambda: (AsrService(whisper_settings), whisper_settings))
    elif role == "asr":
        from vp_asr.app import AsrService
        from vp_asr.settings import AsrSettings

        registry = ProviderRegistry("asr", {"span": "tests.failover.span_asr:SpanAsr"})
        asr_settings = AsrSettings(preload_providers=[])
        service_main(lambda: (AsrService(asr_settings, registry), asr_settings))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1])
