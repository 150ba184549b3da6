package inbox

import (
	"context"
	"fmt"
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
	tx, err := in.e.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return Stats{}, fmt.Errorf("inbox: stats: begin: %w", err)
	}
	defer rollback(tx)
	if err := checkStatsIndexes(ctx, tx, in.e.cfg.Schema); err != nil {
		return Stats{}, err
	}
	if err := noJIT(ctx, tx); err != nil {
		return Stats{}, fmt.Errorf("inbox: stats: %w", err)
	}
	q := in.e.sql.stats
	var st Stats
	if err := tx.QueryRow(ctx, sqlNow).Scan(&st.TakenAt); err != nil {
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
		t.Handled = in.e.handlers.has(t.Topic)
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

// gauges reads the figures of the observable gauges in one read-only
// transaction.
func (e *engine) gauges(ctx context.Context) (gaugeStats, error) {
	tx, err := e.pool.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return gaugeStats{}, err
	}
	defer rollback(tx)
	if err := noJIT(ctx, tx); err != nil {
		return gaugeStats{}, err
	}
	q := e.sql.stats
	var g gaugeStats
	rows, err := tx.Query(ctx, q.pending, StatsTopicLimit, StatsCountLimit)
	if err != nil {
		return g, err
	}
	var t TopicStats
	var secs float64
	_, err = pgx.ForEachRow(rows, []any{&t.Topic, &t.Ready, &t.Scheduled, &secs}, func() error {
		g.topics = append(g.topics, topicGauge{topic: t.Topic, pending: t.Pending(), oldest: seconds(secs)})
		return nil
	})
	if err != nil {
		return g, err
	}
	if err := tx.QueryRow(ctx, q.streamGauges).Scan(&g.parked, &g.gaps, &secs); err != nil {
		return g, err
	}
	g.maxLag = seconds(secs)
	return g, nil
}

// noJIT turns JIT compilation off for the transaction: the stats queries
// read little but look expensive to the planner on large tables, and would
// spend more time compiling than running.
func noJIT(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, sqlNoJIT)
	return err
}

func seconds(s float64) time.Duration {
	return time.Duration(max(s, 0) * float64(time.Second))
}
