"""TTS providers, loaded lazily by name (see ``vp_tts.app.PROVIDERS``).

Every provider class is a ``ProviderBase``: local engines (``scope = "process"``) are built once per
process from the service settings, cloud voices once per robot from its keys and options, both by
``from_context``; ``start()`` (warm-up at service start), ``ready()``, ``health()``, ``aclose()`` and
``for_robot()`` (rhvoice binds a robot's options) are the base's hooks.
"""
