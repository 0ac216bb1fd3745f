"""ASR providers, loaded lazily by name (see ``vp_asr.app.ASR_PROVIDERS``)."""
