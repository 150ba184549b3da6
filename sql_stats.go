package inbox

import "strings"

// statsQueries are the queries of Stats (stats.go) and of the backlog
// gauges.
type statsQueries struct{ topics, pending, running, streams, streamGauges string }

// newStatsQueries builds the queries of Stats and of the backlog gauges.
// They read the indexes made for them (migration 010), whose condition
// requires a non-empty topic: each query states that too, or it cannot use
// them. The workers' statements never do, so the planner cannot take these
// indexes for theirs (see the migration).
func newStatsQueries(r *strings.Replacer) statsQueries {
	// The topics are found by a skip scan: each step jumps to the next
	// topic in the index, so the cost grows with the number of topics,
	// not of rows. Every row is in one of the two partial indexes.
	const topicList = `
WITH RECURSIVE
pending_topics AS (
    (SELECT topic, 1 AS n FROM {schema}.inbox_messages WHERE state = 'pending' AND topic <> '' ORDER BY topic LIMIT 1)
    UNION ALL
    SELECT (SELECT m.topic FROM {schema}.inbox_messages m
            WHERE m.state = 'pending' AND m.topic <> '' AND m.topic > p.topic ORDER BY m.topic LIMIT 1), p.n + 1
    FROM pending_topics p WHERE p.topic IS NOT NULL AND p.n < $1
),
finished_topics AS (
    (SELECT topic, 1 AS n FROM {schema}.inbox_messages WHERE state IN ('done', 'dead') AND topic <> '' ORDER BY topic LIMIT 1)
    UNION ALL
    SELECT (SELECT m.topic FROM {schema}.inbox_messages m
            WHERE m.state IN ('done', 'dead') AND m.topic <> '' AND m.topic > f.topic ORDER BY m.topic LIMIT 1), f.n + 1
    FROM finished_topics f WHERE f.topic IS NOT NULL AND f.n < $1
),
topics AS (
    SELECT topic FROM (
        SELECT topic FROM pending_topics WHERE topic IS NOT NULL
        UNION
        SELECT topic FROM finished_topics WHERE topic IS NOT NULL) u
    ORDER BY topic LIMIT $1
)`
	// One capped scan of the topic's pending entries gives both counts;
	// the oldest is the first entry of its index range.
	const pendingColumns = `
    p.ready, p.scheduled,
    coalesce((SELECT extract(epoch FROM now() - min(m.received_at))::float8 FROM {schema}.inbox_messages m
        WHERE m.state = 'pending' AND m.topic <> '' AND m.topic = t.topic), 0)`
	const pendingJoin = `
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE x.run_at <= now()) AS ready, count(*) FILTER (WHERE x.run_at > now()) AS scheduled
    FROM (SELECT m.run_at FROM {schema}.inbox_messages m
          WHERE m.state = 'pending' AND m.topic <> '' AND m.topic = t.topic LIMIT $2) x
) p`
	return statsQueries{
		pending: r.Replace(topicList + `
SELECT t.topic,` + pendingColumns + `
FROM topics t` + pendingJoin + `
ORDER BY t.topic`),

		topics: r.Replace(topicList + `
SELECT t.topic,` + pendingColumns + `,
    (SELECT count(*) FROM (SELECT 1 FROM {schema}.inbox_messages m
        WHERE m.state IN ('done', 'dead') AND m.topic <> '' AND m.topic = t.topic AND m.state = 'done' LIMIT $2) x),
    (SELECT count(*) FROM (SELECT 1 FROM {schema}.inbox_messages m
        WHERE m.state IN ('done', 'dead') AND m.topic <> '' AND m.topic = t.topic AND m.state = 'dead' LIMIT $2) x),
    (SELECT count(*) FROM (SELECT 1 FROM {schema}.inbox_messages m
        WHERE m.state IN ('done', 'dead') AND m.topic <> '' AND m.topic = t.topic AND m.state = 'done'
          AND m.processed_at >= now() - interval '1 minute' LIMIT $2) x)
FROM topics t` + pendingJoin + `
ORDER BY t.topic`),

		// A row a worker holds is locked (unordered) or its stream's row is
		// (ordered), by a transaction still in progress: its xmax is that
		// transaction's ID, in the snapshot's list of running ones.
		// Unordered rows are sampled per topic, as claims take them: the
		// topics by a skip scan of the claims' (topic, run_at, id) index.
		running: r.Replace(`
WITH RECURSIVE busy AS (
    SELECT coalesce(array_agg(xid(x)), '{}') AS xids FROM pg_snapshot_xip(pg_current_snapshot()) AS x
),
unordered_topics AS (
    (SELECT topic, 1 AS n FROM {schema}.inbox_messages
     WHERE state = 'pending' AND stream IS NULL ORDER BY topic LIMIT 1)
    UNION ALL
    SELECT (SELECT m.topic FROM {schema}.inbox_messages m
            WHERE m.state = 'pending' AND m.stream IS NULL AND m.topic > u.topic ORDER BY m.topic LIMIT 1), u.n + 1
    FROM unordered_topics u WHERE u.topic IS NOT NULL AND u.n < $1
),
unordered AS (
    SELECT x.topic, x.xmax FROM unordered_topics t
    CROSS JOIN LATERAL (
        SELECT m.topic, m.xmax FROM {schema}.inbox_messages m
        WHERE m.state = 'pending' AND m.stream IS NULL AND m.topic = t.topic AND m.run_at <= now()
        ORDER BY m.run_at, m.id LIMIT $1) x
    WHERE t.topic IS NOT NULL
),
stream_heads AS (
    SELECT DISTINCT h.source, h.stream FROM (
        SELECT m.source, m.stream FROM {schema}.inbox_messages m
        WHERE m.state = 'pending' AND m.stream IS NOT NULL AND m.topic <> '' AND m.run_at <= now()
        ORDER BY m.run_at, m.id LIMIT $1) h
),
held AS (
    SELECT u.topic FROM unordered u, busy WHERE u.xmax = ANY (busy.xids)
    UNION ALL
    SELECT m.topic FROM stream_heads h
    JOIN {schema}.inbox_streams s ON s.source = h.source AND s.stream = h.stream
    JOIN {schema}.inbox_messages m ON m.source = s.source AND m.stream = s.stream AND m.seq = s.next_seq
        AND m.state = 'pending' AND m.stream IS NOT NULL
    CROSS JOIN busy WHERE s.xmax = ANY (busy.xids)
)
SELECT topic, count(*) FROM held GROUP BY topic`),

		streams: r.Replace(`
WITH busy AS (
    SELECT coalesce(array_agg(xid(x)), '{}') AS xids FROM pg_snapshot_xip(pg_current_snapshot()) AS x
),
stream_heads AS (
    SELECT DISTINCT h.source, h.stream FROM (
        SELECT m.source, m.stream FROM {schema}.inbox_messages m
        WHERE m.state = 'pending' AND m.stream IS NOT NULL AND m.topic <> '' AND m.run_at <= now()
        ORDER BY m.run_at, m.id LIMIT $2) h
),
lag AS (
    SELECT m.source, m.stream, extract(epoch FROM now() - m.run_at)::float8 AS seconds
    FROM {schema}.inbox_messages m
    WHERE m.state = 'pending' AND m.stream IS NOT NULL AND m.topic <> '' AND m.run_at <= now()
    ORDER BY m.run_at, m.id LIMIT 1
)
SELECT
    (SELECT count(*) FROM (SELECT 1 FROM {schema}.inbox_streams LIMIT $1) x),
    (SELECT count(*) FROM {schema}.inbox_streams WHERE parked_at IS NOT NULL),
    (SELECT count(*) FROM {schema}.inbox_streams WHERE gap_since IS NOT NULL AND parked_at IS NULL),
    (SELECT count(*) FROM stream_heads h
        JOIN {schema}.inbox_streams s ON s.source = h.source AND s.stream = h.stream
        CROSS JOIN busy WHERE s.xmax = ANY (busy.xids)),
    lag.source, lag.stream, lag.seconds
FROM (SELECT 1) one LEFT JOIN lag ON true`),

		streamGauges: r.Replace(`
SELECT
    (SELECT count(*) FROM {schema}.inbox_streams WHERE parked_at IS NOT NULL),
    (SELECT count(*) FROM {schema}.inbox_streams WHERE gap_since IS NOT NULL AND parked_at IS NULL),
    coalesce((SELECT extract(epoch FROM now() - m.run_at)::float8 FROM {schema}.inbox_messages m
        WHERE m.state = 'pending' AND m.stream IS NOT NULL AND m.topic <> '' AND m.run_at <= now()
        ORDER BY m.run_at, m.id LIMIT 1), 0)`),
	}
}
