"""VAD service: per-call speech segmentation (energy or silero) → ``vad.speech_started/ended``."""
