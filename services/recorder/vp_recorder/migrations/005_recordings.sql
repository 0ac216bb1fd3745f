-- 005: call recordings, one row per file: the gateways' stereo WAV of every call and FreeSWITCH's
-- uuid_record files, both announced by call.recording events (start, then stop with the duration).
-- A view over call_events like call_usage (each event stored once), plus the files the retention
-- sweeper (vp_recorder.recordings) has deleted: a recording is "gone" once it has a row there.

CREATE TABLE IF NOT EXISTS recording_deletions (
    path        text PRIMARY KEY,
    deleted_at  timestamptz NOT NULL DEFAULT now(),
    reason      text NOT NULL DEFAULT 'retention'
);

CREATE OR REPLACE VIEW call_recordings AS
SELECT DISTINCT ON (s.call_id, s.data->>'path')
    s.call_id,
    s.data->>'path' AS path,
    COALESCE(NULLIF(s.data->>'format', ''), 'wav') AS format,
    NULLIF((s.data->>'channels')::integer, 0) AS channels,
    s.at AS started_at,
    e.at AS stopped_at,
    (e.data->>'duration_ms')::bigint AS duration_ms,
    d.deleted_at
FROM call_events s
LEFT JOIN LATERAL (
    SELECT x.at, x.data FROM call_events x
    WHERE x.call_id = s.call_id AND x.type = 'call.recording' AND x.data->>'action' = 'stop'
      AND x.data->>'path' = s.data->>'path'
    ORDER BY x.seq DESC LIMIT 1
) e ON true
LEFT JOIN recording_deletions d ON d.path = s.data->>'path'
WHERE s.type = 'call.recording' AND s.data->>'action' = 'start'
ORDER BY s.call_id, s.data->>'path', s.seq;
