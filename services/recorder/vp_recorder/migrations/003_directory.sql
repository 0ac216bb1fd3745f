-- 003: the directory operators use: callers (users) with their call counts, and the robots'
-- scenarios (one row per robot prompt) with a content hash so a re-sync only touches what changed.

ALTER TABLE users
    ADD COLUMN IF NOT EXISTS first_call_at  timestamptz,
    ADD COLUMN IF NOT EXISTS last_call_at   timestamptz,
    ADD COLUMN IF NOT EXISTS calls_count    integer NOT NULL DEFAULT 0;

-- "who called recently"
CREATE INDEX IF NOT EXISTS users_last_call_at_idx ON users (last_call_at DESC);

-- each call counted once per caller: a redelivered call.started finds its row and counts nothing
CREATE TABLE IF NOT EXISTS user_calls (
    call_id    text PRIMARY KEY,
    phone      text NOT NULL,
    called_at  timestamptz NOT NULL
);

-- "calls of this caller"
CREATE INDEX IF NOT EXISTS user_calls_phone_called_at_idx ON user_calls (phone, called_at DESC);

ALTER TABLE scenarios
    -- SHA-256 (hex) of the canonical JSON of config
    ADD COLUMN IF NOT EXISTS content_sha256  text,
    ADD COLUMN IF NOT EXISTS updated_at      timestamptz NOT NULL DEFAULT now();
