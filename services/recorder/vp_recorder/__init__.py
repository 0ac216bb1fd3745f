"""recorder service."""
