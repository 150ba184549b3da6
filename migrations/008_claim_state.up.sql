-- Claims that read only what they return.
--
-- Unordered work is claimed per handled topic, so pending rows of a topic
-- no handler takes are never read by a claim.
CREATE INDEX inbox_messages_unordered_topic
    ON {schema}.inbox_messages (topic, run_at, id)
    WHERE state = 'pending' AND stream IS NULL;

-- It replaces the (run_at, id) index of 001, which a claim's planner could
-- still choose, and then filter by topic.
DROP INDEX {schema}.inbox_messages_unordered_ready;

-- What a stream claim needs to know about each stream, kept up to date so
-- that claims and the gap sweep read this table's small indexes instead of
-- message backlogs. It is a table apart from inbox_streams because a worker
-- holds its stream's inbox_streams row locked for a whole batch, and Store
-- must not wait for that: Store updates this row, and a worker locks it
-- only briefly, to rewrite it just before it commits.
--
--   next_seq, parked  copies of inbox_streams.next_seq and parked_at IS NOT NULL,
--                     so that Store judges its arrivals against the newest ones
--   low_seq, high_seq lowest and highest pending sequence number (NULL: none)
--   ready_at          when the message at (or below) the watermark is due;
--                     NULL when there is none, or the stream is parked
--   topic, head_id    that message's topic and row id
--
-- ready_at may be early (a claim then finds nothing to run and rewrites the
-- row) but never missing while a runnable message waits: every change of a
-- stream's watermark, park state or head message rewrites the row from the
-- messages, in a statement that starts after the row is locked, and Store
-- locks the row whenever it stores a message of the stream.
CREATE TABLE {schema}.inbox_stream_heads (
    source   text        NOT NULL,
    stream   text        NOT NULL,
    next_seq bigint      NOT NULL,
    parked   boolean     NOT NULL DEFAULT false,
    low_seq  bigint,
    high_seq bigint,
    ready_at timestamptz,
    topic    text,
    head_id  bigint,
    PRIMARY KEY (source, stream)
);

-- Stream claims: ready streams of one topic, oldest first.
CREATE INDEX inbox_stream_heads_ready
    ON {schema}.inbox_stream_heads (topic, ready_at)
    WHERE ready_at IS NOT NULL;

-- The gap sweep: unparked streams with pending messages, none at the
-- watermark.
CREATE INDEX inbox_stream_heads_gap
    ON {schema}.inbox_stream_heads (source, stream)
    WHERE ready_at IS NULL AND NOT parked AND high_seq > next_seq;

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
) h ON true;
