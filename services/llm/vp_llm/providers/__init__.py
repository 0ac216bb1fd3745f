"""LLM providers, loaded lazily by name (see ``vp_llm.app.PROVIDERS``)."""
