"""TTS service tests."""
