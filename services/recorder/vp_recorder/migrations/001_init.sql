-- 001: calls, their turns, and the first tables of the storage design (scenarios, users).
-- Applied once by vp_recorder.migrate (inside a transaction holding the migration lock).

CREATE TABLE calls (
    call_id       text PRIMARY KEY,
    caller        text NOT NULL DEFAULT '',
    robot         text NOT NULL DEFAULT '',
    mode          text NOT NULL DEFAULT 'pipeline',
    -- NULL until call.started arrives (a turn may be recorded before it)
    channel       text CHECK (channel IN ('web', 'phone')),
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'ended')),
    started_at    timestamptz NOT NULL,
    ended_at      timestamptz,
    duration_sec  double precision,
    turns         integer NOT NULL DEFAULT 0,
    end_reason    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- dashboard: recent calls, recent calls of a robot, live calls, calls of a caller
CREATE INDEX calls_started_at_idx ON calls (started_at DESC);
CREATE INDEX calls_robot_started_at_idx ON calls (robot, started_at DESC);
CREATE INDEX calls_status_idx ON calls (status);
CREATE INDEX calls_caller_idx ON calls (caller);

CREATE TABLE call_turns (
    call_id                text NOT NULL REFERENCES calls (call_id) ON DELETE CASCADE,
    turn_id                text NOT NULL,
    user_text              text NOT NULL DEFAULT '',
    bot_text               text NOT NULL DEFAULT '',
    interrupted            boolean NOT NULL DEFAULT false,
    played_text            text NOT NULL DEFAULT '',
    speech_end_at          timestamptz,
    -- milliseconds from the end of the caller's speech; NULL when the stage did not happen
    asr_ms                 integer,
    llm_first_sentence_ms  integer,
    tts_first_audio_ms     integer,
    voice_to_voice_ms      integer,
    created_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (call_id, turn_id)
);

CREATE TABLE scenarios (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    robot       text NOT NULL,
    name        text NOT NULL,
    config      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (robot, name)
);

CREATE TABLE users (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    phone       text UNIQUE,
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
