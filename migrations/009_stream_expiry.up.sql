-- Idle-stream expiry (Config.IdleStreamExpiry) deletes a stream only under
-- the lock of its inbox_stream_heads row, and Store makes a stream's rows
-- only under that lock: so every stream needs a head row. Streams that
-- never had a pending message since migration 008 (all their messages were
-- duplicates by ID) get theirs here, as 008 built them.
INSERT INTO {schema}.inbox_stream_heads (source, stream, next_seq, parked, low_seq, high_seq, ready_at, topic, head_id)
SELECT s.source, s.stream, s.next_seq, s.parked_at IS NOT NULL, r.low_seq, r.high_seq,
       CASE WHEN s.parked_at IS NULL THEN r.ready_at END, h.topic, h.id
FROM {schema}.inbox_streams s
CROSS JOIN LATERAL (
    SELECT min(m.seq) AS low_seq, max(m.seq) AS high_seq,
           min(m.run_at) FILTER (WHERE m.seq <= s.next_seq) AS ready_at
    FROM {schema}.inbox_messages m
    WHERE m.source = s.source AND m.stream = s.stream AND m.state = 'pending' AND m.stream IS NOT NULL
) r
LEFT JOIN LATERAL (
    SELECT m.id, m.topic FROM {schema}.inbox_messages m
    WHERE m.source = s.source AND m.stream = s.stream AND m.state = 'pending' AND m.stream IS NOT NULL
      AND m.seq <= s.next_seq
    ORDER BY m.seq DESC LIMIT 1
) h ON true
WHERE NOT EXISTS (SELECT 1 FROM {schema}.inbox_stream_heads x WHERE x.source = s.source AND x.stream = s.stream);

-- Vacuum settings for tables that churn. Each handled message leaves dead
-- tuples behind: its pending version when it is marked done (not a HOT
-- update: the partial indexes' conditions change), then its done version
-- at retention cleanup, and its attempt-start row. The default waits for a
-- fifth of a table to be dead: with a long Retention, millions of dead
-- entries in front of the claims' index ranges. (Autovacuum still visits a
-- database only once per autovacuum_naptime; that, a server setting, stays
-- the bound.) These settings take a SHARE UPDATE EXCLUSIVE lock: they do
-- not block writers.
ALTER TABLE {schema}.inbox_messages SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02);

-- Small, every row inserted and deleted within one batch.
ALTER TABLE {schema}.inbox_attempt_starts SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0);

-- One row per stream, rewritten on each settle; inbox_streams' updates
-- touch no indexed column, so room in the page keeps them HOT.
ALTER TABLE {schema}.inbox_stream_heads SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0);
ALTER TABLE {schema}.inbox_streams SET (
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0);
