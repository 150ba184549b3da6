package main

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/inboxkit/inbox"
)

// benchTopic is the topic of every benchmark message.
const benchTopic = "bench"

// benchStreams is how many streams the ordered case spreads messages over.
const benchStreams = 1000

// loadPending bulk-loads n pending messages of bodySize bytes into schema's
// inbox table in one INSERT ... SELECT generate_series, far faster than
// Store for a million rows. With streams > 0, message g goes to stream
// g mod streams with the next sequence number of that stream, so every
// stream has work from the start and the streams interleave in arrival
// order, as they would off a shared queue.
func loadPending(ctx context.Context, pool *pgxpool.Pool, schema string, n, bodySize, streams int) error {
	q := pgx.Identifier{schema}.Sanitize()
	// The body is the same for every row: the benchmark cares about its
	// size, and the filler is not compressible below the TOAST threshold.
	payload := body(bodySize, time.Now())
	// Chunks keep one statement's WAL and memory moderate for a million rows.
	const chunk = 200_000
	for from := 0; from < n; from += chunk {
		to := min(from+chunk, n) - 1
		var err error
		if streams > 0 {
			_, err = pool.Exec(ctx, `
INSERT INTO `+q+`.inbox_messages (source, message_id, topic, stream, seq, body)
SELECT 'bench', 'm-' || g, $3, 's-' || (g % $4), g / $4 + 1, $5
FROM generate_series($1::bigint, $2::bigint) g`, from, to, benchTopic, streams, payload)
		} else {
			_, err = pool.Exec(ctx, `
INSERT INTO `+q+`.inbox_messages (source, message_id, topic, body)
SELECT 'bench', 'm-' || g, $3, $4
FROM generate_series($1::bigint, $2::bigint) g`, from, to, benchTopic, payload)
		}
		if err != nil {
			return fmt.Errorf("bulk-load messages %d..%d into %s: %w", from, to, schema, err)
		}
	}
	if streams > 0 {
		if _, err := pool.Exec(ctx, `
INSERT INTO `+q+`.inbox_streams (source, stream, next_seq)
SELECT 'bench', 's-' || g, 1 FROM generate_series(0, $1::int - 1) g`, min(streams, n)); err != nil {
			return fmt.Errorf("create streams in %s: %w", schema, err)
		}
	}
	// Settle the fresh rows as they would be in a running system, where a
	// backlog has been there a while: statistics for the planner, hint bits
	// and the visibility map set by vacuum, and the bulk load's dirty pages
	// written by a checkpoint. Otherwise the first round pays for the load:
	// every row it reads is dirtied to set hint bits, and a million rows of
	// WAL set off a checkpoint in the middle of the measurement.
	if _, err := pool.Exec(ctx, "VACUUM (ANALYZE) "+q+".inbox_messages, "+q+".inbox_streams"); err != nil {
		return fmt.Errorf("vacuum %s: %w", schema, err)
	}
	// CHECKPOINT needs superuser or pg_checkpoint; without them the run
	// goes on, only noisier.
	if _, err := pool.Exec(ctx, "CHECKPOINT"); err != nil {
		logf("warning: CHECKPOINT after loading %s: %v", schema, err)
	}
	return nil
}

// counter counts handler calls and closes reached once it reaches target.
type counter struct {
	n       atomic.Int64
	target  int64
	reached chan struct{}
}

func newCounter(target int) *counter {
	return &counter{target: int64(target), reached: make(chan struct{})}
}

func (c *counter) add() {
	if c.n.Add(1) == c.target {
		close(c.reached)
	}
}

// waitCommitted waits until the handlers have run c.target times, then
// polls until query (a count) reports at least committed, so a rate covers
// the commits and not only the handler calls.
func waitCommitted(ctx context.Context, pool *pgxpool.Pool, c *counter, query string, committed int64) error {
	select {
	case <-c.reached:
	case <-ctx.Done():
		return fmt.Errorf("%d of %d handled: %w", c.n.Load(), c.target, ctx.Err())
	}
	for {
		var done int64
		if err := pool.QueryRow(ctx, query).Scan(&done); err != nil {
			return fmt.Errorf("count committed: %w", err)
		}
		if done >= committed {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d committed: %w", done, committed, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// inboxRun is one processing setup of the inbox.
type inboxRun struct {
	name     string
	messages int // messages each round processes
	pending  int // rows loaded before the rounds; at least messages
	rounds   int // measured runs on the loaded rows, each of messages
	streams  int // 0 for unordered messages
	bodySize int
	cfg      inbox.Config
}

// runInboxProcessing loads the pending rows once, then runs r.rounds
// rounds: each starts an Inbox with a no-op handler and measures how long
// r.messages more take to be handled and committed, then stops it. Rounds
// after the first work on what the earlier ones left, so pending must hold
// enough rows for all of them.
func runInboxProcessing(ctx context.Context, r inboxRun) ([]Result, error) {
	r.rounds = max(r.rounds, 1)
	pending := max(r.pending, r.messages*r.rounds)
	pool, err := newPool(ctx, "bench "+r.name, int32(r.cfg.Workers+4))
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	schema, drop, err := inboxSchema(ctx, pool, "bench_"+sanitize(r.name))
	if err != nil {
		return nil, err
	}
	defer drop()
	loadStart := time.Now()
	if err := loadPending(ctx, pool, schema, pending, r.bodySize, r.streams); err != nil {
		return nil, err
	}
	logf("%s: loaded %d pending rows in %s", r.name, pending, time.Since(loadStart).Round(time.Millisecond))

	cfg := r.cfg
	cfg.Schema = schema
	cfg.Logger = quietLogger()
	countDone := "SELECT count(*) FROM " + pgx.Identifier{schema}.Sanitize() + ".inbox_messages WHERE state = 'done'"
	var out []Result
	for range r.rounds {
		var done int64
		if err := pool.QueryRow(ctx, countDone).Scan(&done); err != nil {
			return nil, fmt.Errorf("%s: count done: %w", r.name, err)
		}
		res, err := inboxRound(ctx, pool, cfg, r, countDone, done+int64(r.messages))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r.name, err)
		}
		if pending > r.messages {
			res.Settings += fmt.Sprintf(", %d of %d pending rows", r.messages, pending-int(done))
		}
		out = append(out, res)
	}
	return out, nil
}

// inboxRound runs one Inbox until committed rows are done.
func inboxRound(ctx context.Context, pool *pgxpool.Pool, cfg inbox.Config, r inboxRun, countDone string, committed int64) (Result, error) {
	in, err := inbox.New(pool, cfg)
	if err != nil {
		return Result{}, err
	}
	c := newCounter(r.messages)
	in.Handle(benchTopic, func(context.Context, pgx.Tx, *inbox.Message) error {
		c.add()
		return nil
	})
	mem := startMemSampler(50 * time.Millisecond)
	start := time.Now()
	if err := in.Start(ctx); err != nil {
		mem.Stop()
		return Result{}, fmt.Errorf("start inbox: %w", err)
	}
	waitErr := waitCommitted(ctx, pool, c, countDone, committed)
	elapsed := time.Since(start)
	stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	stopErr := in.Stop(stopCtx)
	cancel()
	m := mem.Stop()
	if waitErr != nil {
		return Result{}, waitErr
	}
	if stopErr != nil {
		return Result{}, fmt.Errorf("stop inbox: %w", stopErr)
	}
	cfg = in.Config()
	settings := fmt.Sprintf("Workers=%d BatchSize=%d", cfg.Workers, cfg.BatchSize)
	if r.streams > 0 {
		settings = fmt.Sprintf("Workers=%d StreamsPerClaim=%d StreamBatchSize=%d, %d streams",
			cfg.Workers, cfg.StreamsPerClaim, cfg.StreamBatchSize, r.streams)
	}
	return Result{
		Messages: r.messages,
		Seconds:  elapsed.Seconds(),
		Rate:     float64(r.messages) / elapsed.Seconds(),
		Memory:   &m,
		Settings: settings,
	}, nil
}
