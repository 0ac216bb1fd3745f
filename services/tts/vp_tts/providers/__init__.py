"""TTS providers, loaded lazily by name (see ``vp_tts.app.PROVIDERS``).

Every provider class is built as ``cls(settings: TtsSettings)``; optional ``async start()`` (warm-up
at service start), ``async aclose()``, ``ready()`` and ``health()`` are used when present.
"""
