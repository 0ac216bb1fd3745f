"""ASR service tests."""
