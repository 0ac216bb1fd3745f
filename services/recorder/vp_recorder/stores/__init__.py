"""The recorder's stores: PostgreSQL (history of calls and turns) and Redis (live call state)."""
