-- 006: the events a call's derived columns (turns, barge-ins, errors, last prompt) and the
-- merged-away turn check are computed from, reachable per call without reading the call's other
-- events (VAD, partial transcripts, sentences: most of a call) or scanning the table.
-- The list of types is also in stores/postgres.py (FIGURE_TYPES): the queries name them so the
-- planner can use this index.

CREATE INDEX IF NOT EXISTS call_events_figures_idx ON call_events (call_id, type, turn_id)
    WHERE type IN ('turn.metrics', 'control.interrupt', 'stage.error', 'prompt.switched');
