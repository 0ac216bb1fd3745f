-- 007: a batch of call events is written by one function call, one round trip to the server.
-- Before, a batch was ~10 statements (claim, events, ensure calls, one per kind of row, callers,
-- figures), each a round trip that waited behind the recorder's other store consumers in a shared
-- event loop: ~112 ms per 500 events inside the recorder against ~40 ms of server time.
-- stores/postgres.py builds the rows (one composite array per kind, in stream order) and decides
-- which calls' derived columns to recompute (FIGURE_TYPES there; the list below is the partial
-- index's of 006, named so the planner uses it).

CREATE TYPE batch_event AS (
    call_id text, seq bigint, type text, turn_id text, at timestamptz, subject text, data jsonb
);
CREATE TYPE batch_started AS (
    call_id text, caller text, robot text, mode text, channel text, started_at timestamptz,
    sample_rate integer, gateway_id text
);
CREATE TYPE batch_ended AS (
    call_id text, started_at timestamptz, ended_at timestamptz, duration_sec double precision,
    end_reason text
);
CREATE TYPE batch_turn AS (
    call_id text, turn_id text, user_text text, bot_text text, interrupted boolean,
    played_text text, speech_end_at timestamptz, asr_ms integer, llm_first_sentence_ms integer,
    tts_first_audio_ms integer, voice_to_voice_ms integer, asr_latency_ms integer,
    llm_latency_ms integer, tts_latency_ms integer
);
CREATE TYPE batch_turn_llm AS (
    call_id text, turn_id text, llm_provider text, prompt_tokens integer, completion_tokens integer
);
CREATE TYPE batch_turn_asr AS (call_id text, turn_id text, asr_provider text);
CREATE TYPE batch_turn_ref AS (call_id text, turn_id text);

-- a caller turn the gateway merged into a later one (control.interrupt reason "continued") before
-- the caller heard any reply is no turn of its own: its words are in the later turn's transcript
CREATE FUNCTION merged_away(p_call_id text, p_turn_id text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM call_events e WHERE e.call_id = p_call_id AND e.turn_id = p_turn_id
                   AND e.type = 'control.interrupt' AND e.data->>'reason' = 'continued')
       AND NOT EXISTS (SELECT 1 FROM call_events e WHERE e.call_id = p_call_id
                       AND e.turn_id = p_turn_id AND e.type = 'turn.metrics')
$$;

-- count call p_call_id for caller p_phone once, however often it is recorded; calls may be
-- recorded out of order (LEAST/GREATEST also skip the NULLs of rows made before 003)
CREATE FUNCTION record_caller(p_call_id text, p_phone text, p_at timestamptz) RETURNS void
LANGUAGE sql AS $$
    WITH new_call AS (
        INSERT INTO user_calls (call_id, phone, called_at)
        SELECT p_call_id, p_phone, p_at WHERE p_phone <> ''
        ON CONFLICT (call_id) DO NOTHING
        RETURNING phone, called_at
    )
    INSERT INTO users (phone, first_call_at, last_call_at, calls_count)
    SELECT phone, called_at, called_at, 1 FROM new_call
    ON CONFLICT (phone) DO UPDATE SET
        first_call_at = LEAST(users.first_call_at, EXCLUDED.first_call_at),
        last_call_at = GREATEST(users.last_call_at, EXCLUDED.last_call_at),
        calls_count = users.calls_count + 1
$$;

-- Kind after kind, each kind one statement: what running the events one at a time would give.
-- Each kind sets columns no later kind sets (or decides from call_events, complete for the batch
-- once inserted first), and within a kind a row's last account wins (DISTINCT ON the key, latest
-- in the stream first), as it would one at a time. Everything is idempotent, so a redelivered
-- batch changes nothing.
CREATE FUNCTION record_batch(
    p_events batch_event[], p_call_ids text[], p_call_starts timestamptz[],
    p_started batch_started[], p_ended batch_ended[], p_turns batch_turn[],
    p_turns_llm batch_turn_llm[], p_turns_asr batch_turn_asr[], p_merged batch_turn_ref[],
    p_refreshed text[]
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- one lock per call, taken in one order by every recorder, so recorders never deadlock
    PERFORM pg_advisory_xact_lock(k)
    FROM (SELECT DISTINCT hashtextextended(c, 0) AS k FROM unnest(p_call_ids) AS c ORDER BY 1) AS ks;

    INSERT INTO call_events (call_id, seq, type, turn_id, at, subject, data)
    SELECT e.call_id, e.seq, e.type, e.turn_id, e.at, e.subject, e.data FROM unnest(p_events) AS e
    ON CONFLICT (call_id, seq) DO NOTHING;

    -- any event may come before call.started (several recorders, redelivery): the row first
    INSERT INTO calls (call_id, started_at)
    SELECT * FROM unnest(p_call_ids, p_call_starts) ON CONFLICT (call_id) DO NOTHING;

    -- call.started before call.ended: the ended call's duration may come from its start
    INSERT INTO calls AS c (call_id, caller, robot, mode, channel, status, started_at, sample_rate, gateway_id)
    SELECT DISTINCT ON (s.call_id)
           s.call_id, s.caller, s.robot, s.mode, s.channel, 'active', s.started_at, s.sample_rate, s.gateway_id
    FROM unnest(p_started) WITH ORDINALITY AS s
    ORDER BY s.call_id, s.ordinality DESC
    ON CONFLICT (call_id) DO UPDATE SET
        caller = EXCLUDED.caller, robot = EXCLUDED.robot, mode = EXCLUDED.mode,
        channel = EXCLUDED.channel, started_at = EXCLUDED.started_at,
        sample_rate = EXCLUDED.sample_rate, gateway_id = EXCLUDED.gateway_id, updated_at = now();

    INSERT INTO calls AS c (call_id, status, started_at, ended_at, duration_sec, end_reason)
    SELECT DISTINCT ON (n.call_id) n.call_id, 'ended', n.started_at, n.ended_at, n.duration_sec, n.end_reason
    FROM unnest(p_ended) WITH ORDINALITY AS n
    ORDER BY n.call_id, n.ordinality DESC
    ON CONFLICT (call_id) DO UPDATE SET
        status = 'ended',
        ended_at = EXCLUDED.ended_at,
        duration_sec = COALESCE(EXCLUDED.duration_sec,
                                EXTRACT(EPOCH FROM EXCLUDED.ended_at - c.started_at)::double precision),
        end_reason = EXCLUDED.end_reason,
        updated_at = now();

    INSERT INTO call_turns AS ct (call_id, turn_id, user_text, bot_text, interrupted, played_text,
                                  speech_end_at, asr_ms, llm_first_sentence_ms, tts_first_audio_ms,
                                  voice_to_voice_ms, asr_latency_ms, llm_latency_ms, tts_latency_ms)
    SELECT DISTINCT ON (t.call_id, t.turn_id)
           t.call_id, t.turn_id, t.user_text, t.bot_text, t.interrupted, t.played_text,
           t.speech_end_at, t.asr_ms, t.llm_first_sentence_ms, t.tts_first_audio_ms,
           t.voice_to_voice_ms, t.asr_latency_ms, t.llm_latency_ms, t.tts_latency_ms
    FROM unnest(p_turns) WITH ORDINALITY AS t
    ORDER BY t.call_id, t.turn_id, t.ordinality DESC
    ON CONFLICT (call_id, turn_id) DO UPDATE SET
        user_text = EXCLUDED.user_text, bot_text = EXCLUDED.bot_text,
        interrupted = EXCLUDED.interrupted, played_text = EXCLUDED.played_text,
        speech_end_at = EXCLUDED.speech_end_at, asr_ms = EXCLUDED.asr_ms,
        llm_first_sentence_ms = EXCLUDED.llm_first_sentence_ms,
        tts_first_audio_ms = EXCLUDED.tts_first_audio_ms,
        voice_to_voice_ms = EXCLUDED.voice_to_voice_ms,
        asr_latency_ms = EXCLUDED.asr_latency_ms, llm_latency_ms = EXCLUDED.llm_latency_ms,
        tts_latency_ms = EXCLUDED.tts_latency_ms;

    -- providers and usage come from the stages themselves, possibly before the gateway's account
    INSERT INTO call_turns AS ct (call_id, turn_id, llm_provider, prompt_tokens, completion_tokens)
    SELECT DISTINCT ON (l.call_id, l.turn_id)
           l.call_id, l.turn_id, l.llm_provider, l.prompt_tokens, l.completion_tokens
    FROM unnest(p_turns_llm) WITH ORDINALITY AS l
    WHERE NOT merged_away(l.call_id, l.turn_id)
    ORDER BY l.call_id, l.turn_id, l.ordinality DESC
    ON CONFLICT (call_id, turn_id) DO UPDATE SET
        llm_provider = EXCLUDED.llm_provider, prompt_tokens = EXCLUDED.prompt_tokens,
        completion_tokens = EXCLUDED.completion_tokens;

    INSERT INTO call_turns AS ct (call_id, turn_id, asr_provider)
    SELECT DISTINCT ON (a.call_id, a.turn_id) a.call_id, a.turn_id, a.asr_provider
    FROM unnest(p_turns_asr) WITH ORDINALITY AS a
    WHERE NOT merged_away(a.call_id, a.turn_id)
    ORDER BY a.call_id, a.turn_id, a.ordinality DESC
    ON CONFLICT (call_id, turn_id) DO UPDATE SET asr_provider = EXCLUDED.asr_provider;

    DELETE FROM call_turns ct USING unnest(p_merged) AS m
    WHERE ct.call_id = m.call_id AND ct.turn_id = m.turn_id AND merged_away(m.call_id, m.turn_id);

    PERFORM record_caller(s.call_id, s.caller, COALESCE(s.started_at, 'epoch'::timestamptz))
    FROM unnest(p_started) WITH ORDINALITY AS s
    WHERE s.channel = 'phone'
    ORDER BY s.ordinality;

    -- only the calls whose batch events change their derived columns; per call only its figure
    -- events (the partial index) and its turns (the primary key) are read
    IF cardinality(p_refreshed) > 0 THEN
        WITH ids AS (SELECT DISTINCT unnest(p_refreshed) AS call_id)
        UPDATE calls c SET
            turns = ev.turns,
            barge_ins = ev.barge_ins,
            errors = ev.errors,
            last_prompt = COALESCE(ev.last_prompt, c.last_prompt),
            voice_to_voice_p50_ms = tu.p50,
            voice_to_voice_max_ms = tu.max,
            updated_at = now()
        FROM ids
        CROSS JOIN LATERAL (
            SELECT count(DISTINCT e.turn_id) FILTER (WHERE e.type = 'turn.metrics') AS turns,
                   count(DISTINCT e.turn_id) FILTER (
                       WHERE e.type = 'control.interrupt' AND e.data->>'by_turn_id' <> ''
                         AND COALESCE(e.data->>'reason', 'barge_in') = 'barge_in') AS barge_ins,
                   count(*) FILTER (WHERE e.type = 'stage.error') AS errors,
                   (array_agg(e.data->>'to_prompt' ORDER BY e.at DESC, e.seq DESC)
                        FILTER (WHERE e.type = 'prompt.switched'))[1] AS last_prompt
            FROM call_events e
            WHERE e.call_id = ids.call_id
              AND e.type IN ('turn.metrics', 'control.interrupt', 'stage.error', 'prompt.switched')
        ) AS ev
        CROSS JOIN LATERAL (
            SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY t2.voice_to_voice_ms)) AS p50,
                   max(t2.voice_to_voice_ms) AS max
            FROM call_turns t2 WHERE t2.call_id = ids.call_id
        ) AS tu
        WHERE c.call_id = ids.call_id;
    END IF;
END
$$;
