"""prompt-router service."""
