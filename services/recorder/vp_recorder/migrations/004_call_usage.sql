-- 004: per-call provider usage for cost, summed over the stored provider.usage events (one per
-- provider attempt, failed and cancelled attempts included). A view, not a table: call_events holds
-- each event once by (call_id, seq), so the sums are exact however often an event was redelivered.
-- The recorder's transcripts and the call.ended summary compute the same rows (vp_recorder.usage).

CREATE OR REPLACE VIEW call_usage AS
SELECT
    e.call_id,
    e.data->>'stage' AS stage,
    e.data->>'provider' AS provider,
    COALESCE(e.data->>'model', '') AS model,
    count(*) AS requests,
    -- failed or timed out; a cancelled attempt (barge-in, call end) is not a failure
    count(*) FILTER (WHERE e.data->>'outcome' IN ('failed', 'timeout')) AS failed,
    round(sum(GREATEST(COALESCE((e.data->>'audio_ms')::bigint, 0), 0)) / 1000.0, 3)::double precision
        AS asr_seconds,
    sum(GREATEST(COALESCE((e.data->>'prompt_tokens')::bigint, 0), 0))::bigint AS prompt_tokens,
    sum(GREATEST(COALESCE((e.data->>'completion_tokens')::bigint, 0), 0))::bigint AS completion_tokens,
    sum(GREATEST(COALESCE((e.data->>'characters')::bigint, 0), 0))::bigint AS characters
FROM call_events e
WHERE e.type = 'provider.usage'
GROUP BY e.call_id, e.data->>'stage', e.data->>'provider', COALESCE(e.data->>'model', '');
