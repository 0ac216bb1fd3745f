"""Realtime speech-to-speech (Yandex / OpenAI Realtime) tests."""
