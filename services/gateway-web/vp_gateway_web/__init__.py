"""gateway-web service."""
