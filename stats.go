package inbox

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Limits that keep Stats fast on large tables: every query it runs reads an
// index range or a bounded number of rows, never the whole table.
const (
	// StatsCountLimit caps each count of Stats (per topic and state) and of
	// the backlog gauge. A count equal to it means "at least this many".
	StatsCountLimit = 1_000_000
	// StatsTopicLimit caps the number of topics Stats reports, in name
	// order.
	StatsTopicLimit = 1000
	// StatsRunningScan is how many of the longest-due pending messages,
	// unordered and ordered each, Stats examines to find those held by a
	// worker. Workers claim in that order, so claims sit at the head.
	StatsRunningScan = 10_000
)

// Stats is a snapshot of an inbox, read in one database transaction.
type Stats struct {
	// TakenAt is the database's clock when the snapshot was taken.
	TakenAt time.Time
	// Topics has one entry per topic with any stored message, in name
	// order, at most StatsTopicLimit.
	Topics []TopicStats
	// Streams summarises the ordered streams.
	Streams StreamStats
	// UnhandledPending counts the pending messages of the topics this Inbox
	// has no handler for (see TopicStats.Handled): they wait for an Inbox
	// that handles them, on this or another process. When no process
	// handles their topic they wait forever; Config.StrictTopics rejects
	// them at Store instead.
	UnhandledPending int64
}

// TopicStats is what Stats knows of one topic. Counts stop at
// StatsCountLimit.
type TopicStats struct {
	Topic string
	// Handled reports whether the Inbox that took the snapshot has a
	// handler for the topic.
	Handled bool
	// Ready counts pending messages that are due (their run_at has passed),
	// Running included. An ordered one may still wait for its predecessor.
	Ready int64
	// Scheduled counts pending messages waiting for the time of their next
	// attempt (after a failure, or RetryAfter).
	Scheduled int64
	// Running counts messages a worker holds right now: unordered messages
	// locked by a claim, and for each stream a worker holds, the message at
	// its watermark (the worker may hold up to Config.StreamBatchSize
	// consecutive ones). See Inbox.Stats for how this is found.
	Running int64
	// Done counts processed messages still kept for deduplication
	// (Config.Retention); Dead counts dead ones.
	Done int64
	Dead int64
	// OldestPending is the age of the oldest pending message, or 0.
	OldestPending time.Duration
	// ProcessedLastMinute counts messages processed in the last minute.
	ProcessedLastMinute int64
}

// Pending counts the topic's pending messages, due or scheduled.
func (t TopicStats) Pending() int64 { return t.Ready + t.Scheduled }

// StreamStats summarises the ordered streams.
type StreamStats struct {
	// Total counts the streams the inbox knows (up to StatsCountLimit).
	Total int64
	// Parked counts parked streams; Gap counts streams (not parked)
	// waiting for a missing sequence number.
	Parked int64
	Gap    int64
	// Working counts streams a worker holds right now.
	Working int64
	// MaxLag is how long the longest-waiting due message of any stream has
	// been due: the lag of the stream furthest behind, whether it waits on
	// a gap, a retry, a park, or only on busy workers. MaxLagSource and
	// MaxLagStream name that stream.
	MaxLag                     time.Duration
	MaxLagSource, MaxLagStream string
}

// Total sums the topics: counts are added, OldestPending is the largest.
func (s Stats) Total() TopicStats {
	var t TopicStats
	for _, x := range s.Topics {
		t.Ready += x.Ready
		t.Scheduled += x.Scheduled
		t.Running += x.Running
		t.Done += x.Done
		t.Dead += x.Dead
		t.ProcessedLastMinute += x.ProcessedLastMinute
		t.OldestPending = max(t.OldestPending, x.OldestPending)
	}
	return t
}

// ErrStatsNotMigrated is returned by Stats when the schema lacks the
// indexes of migration 2, without which its queries would scan the table.
var ErrStatsNotMigrated = errors.New("inbox: stats need migration 2 (run migrations.Up or inboxctl migrate up)")

// Stats reads per-topic and per-stream figures in one read-only,
// repeatable-read transaction, so they are consistent with each other.
// It works on a stopped Inbox too.
//
// Every query is bounded (see StatsCountLimit, StatsTopicLimit and
// StatsRunningScan) and reads the indexes of migration 2, so Stats stays
// quick on tables of millions of rows; it returns ErrStatsNotMigrated
// when they are missing.
//
// Running is found without taking any lock: a message a worker holds is
// still pending in this snapshot, and its row's xmax is the transaction ID
// of that worker, which is still in progress. Stats counts the pending rows
// whose xmax is in the snapshot's list of running transactions, among the
// StatsRunningScan longest-due messages (where workers claim) and the
// streams they belong to. Another transaction locking or updating a pending
// row (an operator's UPDATE, say) counts too, so the figure is a close
// estimate, never a lock.
func (in *Inbox) Stats(ctx context.Context) (Stats, error) {
	tx, err := in.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return Stats{}, fmt.Errorf("inbox: stats: begin: %w", err)
	}
	defer rollback(tx)
	if err := in.checkStatsIndexes(ctx, tx); err != nil {
		return Stats{}, err
	}
	if err := noJIT(ctx, tx); err != nil {
		return Stats{}, fmt.Errorf("inbox: stats: %w", err)
	}
	q := in.statsSQL()
	var st Stats
	if err := tx.QueryRow(ctx, "SELECT now()").Scan(&st.TakenAt); err != nil {
		return Stats{}, fmt.Errorf("inbox: stats: %w", err)
	}

	rows, err := tx.Query(ctx, q.topics, StatsTopicLimit, StatsCountLimit)
	if err != nil {
		return Stats{}, fmt.Errorf("inbox: stats per topic: %w", err)
	}
	var t TopicStats
	var oldest float64
	byTopic := map[string]int{}
	_, err = pgx.ForEachRow(rows, []any{&t.Topic, &t.Ready, &t.Scheduled, &oldest, &t.Done, &t.Dead, &t.ProcessedLastMinute}, func() error {
		t.OldestPending = seconds(oldest)
		t.Handled = in.handler(t.Topic) != nil
		if !t.Handled {
			st.UnhandledPending += t.Pending()
		}
		byTopic[t.Topic] = len(st.Topics)
		st.Topics = append(st.Topics, t)
		return nil
	})
	if err != nil {
		return Stats{}, fmt.Errorf("inbox: stats per topic: %w", err)
	}

	rows, err = tx.Query(ctx, q.running, StatsRunningScan)
	if err != nil {
		return Stats{}, fmt.Errorf("inbox: stats of running messages: %w", err)
	}
	var topic string
	var running int64
	_, err = pgx.ForEachRow(rows, []any{&topic, &running}, func() error {
		if i, ok := byTopic[topic]; ok {
			st.Topics[i].Running = running
		}
		return nil
	})
	if err != nil {
		return Stats{}, fmt.Errorf("inbox: stats of running messages: %w", err)
	}

	s := &st.Streams
	var lag *float64
	var lagSource, lagStream *string
	if err := tx.QueryRow(ctx, q.streams, StatsCountLimit, StatsRunningScan).Scan(
		&s.Total, &s.Parked, &s.Gap, &s.Working, &lagSource, &lagStream, &lag); err != nil {
		return Stats{}, fmt.Errorf("inbox: stats of streams: %w", err)
	}
	if lag != nil {
		s.MaxLag, s.MaxLagSource, s.MaxLagStream = seconds(*lag), *lagSource, *lagStream
	}
	return st, nil
}

// gaugeStats is what the observable gauges report: the cheap part of Stats.
type gaugeStats struct {
	topics      []TopicStats // Ready, Scheduled and OldestPending only
	parked, gap int64
	maxLag      time.Duration
}

// gauges reads the figures of the observable gauges in one read-only
// transaction.
func (in *Inbox) gauges(ctx context.Context) (gaugeStats, error) {
	tx, err := in.pool.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return gaugeStats{}, err
	}
	defer rollback(tx)
	if err := noJIT(ctx, tx); err != nil {
		return gaugeStats{}, err
	}
	q := in.statsSQL()
	var g gaugeStats
	rows, err := tx.Query(ctx, q.pending, StatsTopicLimit, StatsCountLimit)
	if err != nil {
		return g, err
	}
	var t TopicStats
	var secs float64
	_, err = pgx.ForEachRow(rows, []any{&t.Topic, &t.Ready, &t.Scheduled, &secs}, func() error {
		t.OldestPending = seconds(secs)
		g.topics = append(g.topics, t)
		return nil
	})
	if err != nil {
		return g, err
	}
	if err := tx.QueryRow(ctx, q.streamGauges).Scan(&g.parked, &g.gap, &secs); err != nil {
		return g, err
	}
	g.maxLag = seconds(secs)
	return g, nil
}

// noJIT turns JIT compilation off for the transaction: the stats queries
// read little but look expensive to the planner on large tables, and would
// spend more time compiling than running.
func noJIT(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, "SET LOCAL jit = off")
	return err
}

func (in *Inbox) checkStatsIndexes(ctx context.Context, tx pgx.Tx) error {
	var ok bool
	err := tx.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL`,
		in.table("inbox_messages_topic_pending"), in.table("inbox_messages_topic_finished")).Scan(&ok)
	if err != nil {
		return fmt.Errorf("inbox: stats: look up indexes: %w", err)
	}
	if !ok {
		return fmt.Errorf("%w (schema %s)", ErrStatsNotMigrated, in.cfg.Schema)
	}
	return nil
}

func seconds(s float64) time.Duration {
	return time.Duration(max(s, 0) * float64(time.Second))
}

type statsQueries struct{ topics, pending, running, streams, streamGauges string }

// statsSQL renders the queries of Stats for this inbox's schema.
func (in *Inbox) statsSQL() statsQueries {
	r := strings.NewReplacer("{schema}", pgx.Identifier{in.cfg.Schema}.Sanitize())
	// The topics are found by a skip scan: each step jumps to the next
	// topic in the index, so the cost grows with the number of topics,
	// not of rows. Every row is in one of the two partial indexes.
	const topicList = `
WITH RECURSIVE
pending_topics AS (
    (SELECT topic, 1 AS n FROM {schema}.inbox_messages WHERE state = 'pending' ORDER BY topic LIMIT 1)
    UNION ALL
    SELECT (SELECT m.topic FROM {schema}.inbox_messages m
            WHERE m.state = 'pending' AND m.topic > p.topic ORDER BY m.topic LIMIT 1), p.n + 1
    FROM pending_topics p WHERE p.topic IS NOT NULL AND p.n < $1
),
finished_topics AS (
    (SELECT topic, 1 AS n FROM {schema}.inbox_messages WHERE state IN ('done', 'dead') ORDER BY topic LIMIT 1)
    UNION ALL
    SELECT (SELECT m.topic FROM {schema}.inbox_messages m
            WHERE m.state IN ('done', 'dead') AND m.topic > f.topic ORDER BY m.topic LIMIT 1), f.n + 1
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
        WHERE m.state = 'pending' AND m.topic = t.topic), 0)`
	const pendingJoin = `
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE x.run_at <= now()) AS ready, count(*) FILTER (WHERE x.run_at > now()) AS scheduled
    FROM (SELECT m.run_at FROM {schema}.inbox_messages m
          WHERE m.state = 'pending' AND m.topic = t.topic LIMIT $2) x
) p`
	return statsQueries{
		pending: r.Replace(topicList + `
SELECT t.topic,` + pendingColumns + `
FROM topics t` + pendingJoin + `
ORDER BY t.topic`),

		topics: r.Replace(topicList + `
SELECT t.topic,` + pendingColumns + `,
    (SELECT count(*) FROM (SELECT 1 FROM {schema}.inbox_messages m
        WHERE m.state IN ('done', 'dead') AND m.topic = t.topic AND m.state = 'done' LIMIT $2) x),
    (SELECT count(*) FROM (SELECT 1 FROM {schema}.inbox_messages m
        WHERE m.state IN ('done', 'dead') AND m.topic = t.topic AND m.state = 'dead' LIMIT $2) x),
    (SELECT count(*) FROM (SELECT 1 FROM {schema}.inbox_messages m
        WHERE m.state IN ('done', 'dead') AND m.topic = t.topic AND m.state = 'done'
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
        WHERE m.state = 'pending' AND m.stream IS NOT NULL AND m.run_at <= now()
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
        WHERE m.state = 'pending' AND m.stream IS NOT NULL AND m.run_at <= now()
        ORDER BY m.run_at, m.id LIMIT $2) h
),
lag AS (
    SELECT m.source, m.stream, extract(epoch FROM now() - m.run_at)::float8 AS seconds
    FROM {schema}.inbox_messages m
    WHERE m.state = 'pending' AND m.stream IS NOT NULL AND m.run_at <= now()
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
        WHERE m.state = 'pending' AND m.stream IS NOT NULL AND m.run_at <= now()
        ORDER BY m.run_at, m.id LIMIT 1), 0)`),
	}
}
