package inbox

import "strings"

// headQueries are the statements that rewrite stream heads (heads.go).
type headQueries struct {
	lockHeads, restoreStreams, refreshHeads string
}

func newHeadQueries(r *strings.Replacer) (q headQueries) {
	// In key order, as every statement that locks several heads, so
	// that two of them cannot deadlock.
	q.lockHeads = r.Replace(`
SELECT count(*) FROM (
    SELECT 1 FROM {schema}.inbox_stream_heads h
    JOIN unnest($1::text[], $2::text[]) AS u(source, stream) ON h.source = u.source AND h.stream = u.stream
    ORDER BY h.source, h.stream
    FOR UPDATE OF h) locked`)

	// Between lock and refresh when messages become pending outside
	// Store (an operator's requeue): a stream without a head row, never
	// made or expired (expiry.go), gets its inbox_streams row again, at
	// the first sequence number ($3). One with a head row keeps its
	// stream, as the lock holds off expiry.
	q.restoreStreams = r.Replace(`
INSERT INTO {schema}.inbox_streams (source, stream, next_seq)
SELECT u.source, u.stream, $3 FROM unnest($1::text[], $2::text[]) AS u(source, stream)
WHERE NOT EXISTS (SELECT 1 FROM {schema}.inbox_stream_heads h WHERE h.source = u.source AND h.stream = u.stream)
ORDER BY 1, 2
ON CONFLICT DO NOTHING`)

	// The stream's next step is the first message at its watermark or,
	// below it, an operator's out-of-order requeue (due at its run_at)
	// or a duplicate or late arrival stored during a race (due at once,
	// since it needs no handler): whichever is due first, with its
	// topic. A parked stream has none.
	q.refreshHeads = r.Replace(`
INSERT INTO {schema}.inbox_stream_heads AS h (source, stream, next_seq, parked, low_seq, high_seq, ready_at, topic, head_id)
SELECT s.source, s.stream, s.next_seq, s.parked_at IS NOT NULL,
       (SELECT min(m.seq) FROM {schema}.inbox_messages m
        WHERE m.source = s.source AND m.stream = s.stream AND m.state = 'pending' AND m.stream IS NOT NULL),
       (SELECT max(m.seq) FROM {schema}.inbox_messages m
        WHERE m.source = s.source AND m.stream = s.stream AND m.state = 'pending' AND m.stream IS NOT NULL),
       CASE WHEN s.parked_at IS NULL THEN c.due END, c.topic, c.id
FROM unnest($1::text[], $2::text[]) AS u(source, stream)
JOIN {schema}.inbox_streams s ON s.source = u.source AND s.stream = u.stream
LEFT JOIN LATERAL (
    SELECT x.id, x.topic, x.due FROM (
        SELECT m.id, m.topic, CASE WHEN m.out_of_order THEN m.run_at ELSE now() END AS due
        FROM {schema}.inbox_messages m
        WHERE m.source = s.source AND m.stream = s.stream AND m.state = 'pending' AND m.stream IS NOT NULL
          AND m.seq < s.next_seq
        UNION ALL
        (SELECT m.id, m.topic, m.run_at
         FROM {schema}.inbox_messages m
         WHERE m.source = s.source AND m.stream = s.stream AND m.state = 'pending' AND m.stream IS NOT NULL
           AND m.seq = s.next_seq
         ORDER BY m.id LIMIT 1)
    ) x
    ORDER BY x.due, x.id LIMIT 1
) c ON true
ORDER BY 1, 2
ON CONFLICT (source, stream) DO UPDATE
SET next_seq = excluded.next_seq, parked = excluded.parked, low_seq = excluded.low_seq,
    high_seq = excluded.high_seq, ready_at = excluded.ready_at, topic = excluded.topic,
    head_id = excluded.head_id`)
	return q
}

// upsertHeads is Store's part of keeping stream heads, a statement for a
// CTE over its inserted pending messages of streams, arrivals (a SELECT of
// source, stream, seq, topic, id, and the watermark as Store read it). A
// new row judges by that watermark; an existing one by its own next_seq,
// the newest. Only an arrival at or below it makes the stream ready; it
// keeps the topic of a stream that was ready already (its head is older
// than the arrival). It returns each row with whether it created it (xmax
// is 0 only in a row version this statement inserted; an updated one
// carries the lock the upsert took).
func upsertHeads(arrivals string) string {
	return `
INSERT INTO {schema}.inbox_stream_heads AS h (source, stream, next_seq, low_seq, high_seq, ready_at, topic, head_id)
SELECT a.source, a.stream, a.watermark, a.seq, a.high_seq,
       CASE WHEN a.seq <= a.watermark THEN now() END, a.topic, a.id
FROM (
    SELECT DISTINCT ON (x.source, x.stream) x.source, x.stream, x.seq, x.topic, x.id, x.watermark,
           max(x.seq) OVER (PARTITION BY x.source, x.stream) AS high_seq
    FROM (` + arrivals + `) x
    ORDER BY x.source, x.stream, x.seq, x.id
) a
ORDER BY a.source, a.stream
ON CONFLICT (source, stream) DO UPDATE
SET low_seq = least(h.low_seq, excluded.low_seq),
    high_seq = greatest(h.high_seq, excluded.high_seq),
    ready_at = CASE WHEN h.parked OR excluded.low_seq > h.next_seq THEN h.ready_at
                    ELSE least(h.ready_at, now()) END,
    topic = CASE WHEN h.parked OR excluded.low_seq > h.next_seq OR h.ready_at IS NOT NULL THEN h.topic
                 ELSE excluded.topic END,
    head_id = CASE WHEN h.parked OR excluded.low_seq > h.next_seq OR h.ready_at IS NOT NULL THEN h.head_id
                   ELSE excluded.head_id END
RETURNING h.source, h.stream, h.next_seq, h.xmax = 0 AS created`
}
