-- 002: every stored call event (the pipeline log, queryable without MongoDB), the per-stage turn
-- figures, and call columns operators filter and sort on.

CREATE TABLE call_events (
    call_id  text NOT NULL,
    -- JetStream stream sequence: the event's identity, the same on every redelivery
    seq      bigint NOT NULL,
    type     text NOT NULL,
    turn_id  text NOT NULL DEFAULT '',
    at       timestamptz NOT NULL,
    subject  text NOT NULL,
    data     jsonb NOT NULL,
    PRIMARY KEY (call_id, seq)
);
-- "all barge-ins / errors of the last hour"
CREATE INDEX call_events_type_at_idx ON call_events (type, at DESC);

ALTER TABLE call_turns
    ADD COLUMN asr_latency_ms     integer,
    ADD COLUMN llm_latency_ms     integer,
    ADD COLUMN tts_latency_ms     integer,
    ADD COLUMN asr_provider       text,
    ADD COLUMN llm_provider       text,
    ADD COLUMN prompt_tokens      integer,
    ADD COLUMN completion_tokens  integer;

ALTER TABLE calls
    ADD COLUMN sample_rate            integer,
    ADD COLUMN gateway_id             text,
    ADD COLUMN last_prompt            text,
    ADD COLUMN barge_ins              integer NOT NULL DEFAULT 0,
    ADD COLUMN errors                 integer NOT NULL DEFAULT 0,
    ADD COLUMN voice_to_voice_p50_ms  integer,
    ADD COLUMN voice_to_voice_max_ms  integer;

-- dashboard: recent calls of a channel; live calls sorted by start
CREATE INDEX calls_channel_started_at_idx ON calls (channel, started_at DESC);
CREATE INDEX calls_status_started_at_idx ON calls (status, started_at DESC);
