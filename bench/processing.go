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

// rows describes a bulk load of pending messages.
type rows struct {
	n      int
	prefix string // of message IDs: prefix-g
	topic  string
	// streams > 0 spreads the rows over that many streams, named
	// streamPrefix-k: message g goes to stream g mod streams with the next
	// sequence number of that stream, so every stream has work from the
	// start and the streams interleave in arrival order, as they would off a
	// shared queue.
	streams      int
	streamPrefix string
}

// loadRows bulk-loads r into schema's inbox table in INSERT ... SELECT
// generate_series statements, far faster than Store for a million rows.
func loadRows(ctx context.Context, pool *pgxpool.Pool, schema string, r rows, bodySize int) error {
	q := pgx.Identifier{schema}.Sanitize()
	// The body is the same for every row: the benchmark cares about its
	// size, and the filler is not compressible below the TOAST threshold.
	payload := body(bodySize, time.Now())
	// Chunks keep one statement's WAL and memory moderate for a million rows.
	const chunk = 200_000
	for from := 0; from < r.n; from += chunk {
		to := min(from+chunk, r.n) - 1
		var err error
		if r.streams > 0 {
			_, err = pool.Exec(ctx, `
INSERT INTO `+q+`.inbox_messages (source, message_id, topic, stream, seq, body)
SELECT 'bench', $6 || '-' || g, $3, $7 || '-' || (g % $4), g / $4 + 1, $5
FROM generate_series($1::bigint, $2::bigint) g`, from, to, r.topic, r.streams, payload, r.prefix, r.streamPrefix)
		} else {
			_, err = pool.Exec(ctx, `
INSERT INTO `+q+`.inbox_messages (source, message_id, topic, body)
SELECT 'bench', $5 || '-' || g, $3, $4
FROM generate_series($1::bigint, $2::bigint) g`, from, to, r.topic, payload, r.prefix)
		}
		if err != nil {
			return fmt.Errorf("bulk-load messages %d..%d into %s: %w", from, to, schema, err)
		}
	}
	if r.streams > 0 {
		if _, err := pool.Exec(ctx, `
INSERT INTO `+q+`.inbox_streams (source, stream, next_seq)
SELECT 'bench', $2 || '-' || g, 1 FROM generate_series(0, $1::int - 1) g`, min(r.streams, r.n), r.streamPrefix); err != nil {
			return fmt.Errorf("create streams in %s: %w", schema, err)
		}
		// What Store keeps for each stream a claim may take (migration
		// 008 of the inbox): its head, here the message at sequence 1.
		if _, err := pool.Exec(ctx, `
INSERT INTO `+q+`.inbox_stream_heads (source, stream, next_seq, low_seq, high_seq, ready_at, topic, head_id)
SELECT s.source, s.stream, s.next_seq, r.low_seq, r.high_seq, h.run_at, h.topic, h.id
FROM `+q+`.inbox_streams s
CROSS JOIN LATERAL (
    SELECT min(m.seq) AS low_seq, max(m.seq) AS high_seq FROM `+q+`.inbox_messages m
    WHERE m.source = s.source AND m.stream = s.stream AND m.state = 'pending' AND m.stream IS NOT NULL) r
LEFT JOIN LATERAL (
    SELECT m.id, m.topic, m.run_at FROM `+q+`.inbox_messages m
    WHERE m.source = s.source AND m.stream = s.stream AND m.state = 'pending' AND m.stream IS NOT NULL
      AND m.seq = s.next_seq
    ORDER BY m.id LIMIT 1) h ON true
WHERE s.stream LIKE $1 || '-%'
ON CONFLICT (source, stream) DO NOTHING`, r.streamPrefix); err != nil {
			return fmt.Errorf("create stream heads in %s: %w", schema, err)
		}
	}
	return nil
}

// settle leaves freshly loaded rows as they would be in a running system,
// where a backlog has been there a while: statistics for the planner, hint
// bits and the visibility map set by vacuum, and the bulk load's dirty
// pages written by a checkpoint. Otherwise the first round pays for the
// load: every row it reads is dirtied to set hint bits, and a million rows
// of WAL set off a checkpoint in the middle of the measurement.
func settle(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	q := pgx.Identifier{schema}.Sanitize()
	if _, err := pool.Exec(ctx, "VACUUM (ANALYZE) "+q+".inbox_messages, "+q+".inbox_streams, "+q+".inbox_stream_heads"); err != nil {
		return fmt.Errorf("vacuum %s: %w", schema, err)
	}
	// CHECKPOINT needs superuser or pg_checkpoint; without them the run
	// goes on, only noisier.
	if _, err := pool.Exec(ctx, "CHECKPOINT"); err != nil {
		logf("warning: CHECKPOINT after loading %s: %v", schema, err)
	}
	return nil
}

// loadPending bulk-loads n pending messages of the benchmark's topic
// (over streams streams, or unordered when 0) and settles them.
func loadPending(ctx context.Context, pool *pgxpool.Pool, schema string, n, bodySize, streams int) error {
	if err := loadRows(ctx, pool, schema, rows{n: n, prefix: "m", topic: benchTopic, streams: streams, streamPrefix: "s"}, bodySize); err != nil {
		return err
	}
	return settle(ctx, pool, schema)
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
	// blocked > 0 adds rows that cannot run beside the load, half in a
	// parked stream and half of a topic without a handler.
	blocked  int
	bodySize int
	cfg      inbox.Config
	// emit makes the handler enqueue one follow-up message per message
	// through an Outbox in its transaction (no relay runs: they stay
	// pending): a consumer service that emits messages.
	emit bool
}

// runInboxProcessing loads the pending rows once, then runs r.rounds
// rounds on them (see testbed.round).
func runInboxProcessing(ctx context.Context, r inboxRun) ([]Result, error) {
	r.rounds = max(r.rounds, 1)
	tb, err := prepareInbox(ctx, r)
	if err != nil {
		return nil, err
	}
	defer tb.close()
	var out []Result
	for range r.rounds {
		res, err := tb.round(ctx)
		if err != nil {
			return nil, err
		}
		out = append(out, res)
	}
	return out, nil
}

// testbed is a schema loaded with pending rows for rounds of an Inbox.
type testbed struct {
	r         inboxRun
	pool      *pgxpool.Pool
	schema    string
	claims    *claimTracer
	pending   int
	countDone string
}

// prepareInbox creates a schema and loads it with enough rows for
// r.rounds rounds (and r.pending at least), plus r.blocked blocked rows.
func prepareInbox(ctx context.Context, r inboxRun) (*testbed, error) {
	// A round stops its inbox once enough rows are done, and batches in
	// flight finish past that: each later round needs a tenth more slack.
	rounds := max(r.rounds, 1)
	tb := &testbed{r: r, claims: &claimTracer{}, pending: max(r.pending, r.messages*rounds+r.messages/10*(rounds-1))}
	pool, err := newTracedPool(ctx, "bench "+r.name, int32(r.cfg.Workers+4), tb.claims)
	if err != nil {
		return nil, err
	}
	tb.pool = pool
	schema, drop, err := inboxSchema(ctx, pool, "bench_"+sanitize(r.name))
	if err != nil {
		pool.Close()
		return nil, err
	}
	tb.schema = schema
	tb.countDone = "SELECT count(*) FROM " + pgx.Identifier{schema}.Sanitize() + ".inbox_messages WHERE state = 'done'"
	loadStart := time.Now()
	err = loadBlocked(ctx, pool, schema, r.blocked, r.bodySize)
	if err == nil {
		err = loadPending(ctx, pool, schema, tb.pending, r.bodySize, r.streams)
	}
	if err != nil {
		drop()
		pool.Close()
		return nil, err
	}
	logf("%s: loaded %d pending rows and %d blocked in %s", r.name, tb.pending, r.blocked, time.Since(loadStart).Round(time.Millisecond))
	return tb, nil
}

func (tb *testbed) close() {
	dropSchema(tb.pool, tb.schema)
	tb.pool.Close()
}

// round starts an Inbox with a no-op handler, measures how long
// tb.r.messages more take to be handled and committed, then stops it.
// Rounds after the first work on what the earlier ones left.
func (tb *testbed) round(ctx context.Context) (Result, error) {
	var done int64
	if err := tb.pool.QueryRow(ctx, tb.countDone).Scan(&done); err != nil {
		return Result{}, fmt.Errorf("%s: count done: %w", tb.r.name, err)
	}
	if left := tb.pending - int(done); left < tb.r.messages {
		return Result{}, fmt.Errorf("%s: %d pending rows left, a round needs %d", tb.r.name, left, tb.r.messages)
	}
	cfg := tb.r.cfg
	cfg.Schema = tb.schema
	cfg.Logger = quietLogger()
	tb.claims.take() // only this round's claims
	res, err := inboxRound(ctx, tb.pool, cfg, tb.r, tb.countDone, done+int64(tb.r.messages))
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", tb.r.name, err)
	}
	res.Claims = summarizeClaims(tb.claims.take())
	if tb.pending > tb.r.messages {
		res.Settings += fmt.Sprintf(", %d of %d pending rows", tb.r.messages, tb.pending-int(done))
	}
	if tb.r.blocked > 0 {
		res.Settings += fmt.Sprintf(", beside %d blocked rows", tb.r.blocked)
	}
	return res, nil
}

// inboxRound runs one Inbox until committed rows are done.
func inboxRound(ctx context.Context, pool *pgxpool.Pool, cfg inbox.Config, r inboxRun, countDone string, committed int64) (Result, error) {
	in, err := inbox.New(pool, cfg)
	if err != nil {
		return Result{}, err
	}
	c := newCounter(r.messages)
	handler := func(context.Context, pgx.Tx, *inbox.Message) error {
		c.add()
		return nil
	}
	if r.emit {
		ob, err := inbox.NewOutbox(pool, inbox.OutboxConfig{Schema: cfg.Schema, Logger: quietLogger()})
		if err != nil {
			return Result{}, err
		}
		handler = func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
			_, err := ob.Enqueue(ctx, tx, inbox.OutgoingMessage{RoutingKey: "bench.followups", Type: "followup", Body: m.Body})
			if err == nil {
				c.add()
			}
			return err
		}
	}
	in.Handle(benchTopic, handler)
	mem := startMemSampler(50 * time.Millisecond)
	cpu, start := startCPU(), time.Now()
	if err := in.Start(ctx); err != nil {
		mem.Stop()
		return Result{}, fmt.Errorf("start inbox: %w", err)
	}
	waitErr := waitCommitted(ctx, pool, c, countDone, committed)
	elapsed := time.Since(start)
	cpuUse := cpu.stop(r.messages)
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
	if r.emit {
		settings += fmt.Sprintf(", each handler enqueues one %d-byte follow-up (Outbox.Enqueue, no relay running)", r.bodySize)
	}
	if r.streams > 0 {
		settings = fmt.Sprintf("Workers=%d StreamsPerClaim=%d StreamBatchSize=%d, %d streams",
			cfg.Workers, cfg.StreamsPerClaim, cfg.StreamBatchSize, r.streams)
	}
	return Result{
		Messages: r.messages,
		Seconds:  elapsed.Seconds(),
		Rate:     float64(r.messages) / elapsed.Seconds(),
		Memory:   &m,
		CPU:      cpuUse,
		Settings: settings,
	}, nil
}
