package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/amqp"
)

// SoakOptions are the -soak flags.
type SoakOptions struct {
	Duration time.Duration `json:"duration_ns"`
	// Rate is the offered load; 0 measures the saturated end-to-end rate
	// first and offers half of it.
	Rate        float64       `json:"rate_per_sec"`
	Bucket      time.Duration `json:"bucket_ns"`
	Retention   time.Duration `json:"retention_ns"`
	Maintenance time.Duration `json:"maintenance_interval_ns"`
	// StreamExpiry is the inbox's IdleStreamExpiry in the soak.
	StreamExpiry time.Duration `json:"idle_stream_expiry_ns"`
	// VacuumCostDelay, when not negative, is set as inbox_messages'
	// autovacuum_vacuum_cost_delay (in ms), in place of the migrations'
	// (0, see docs/operations.md): 2 is the server default.
	VacuumCostDelay float64 `json:"vacuum_cost_delay_ms"`
	// Outbox makes each handler enqueue one follow-up message through an
	// Outbox, in its transaction, which a Relay publishes: the consumer
	// service that emits messages, churning outbox_messages as well.
	Outbox bool `json:"outbox,omitempty"`
}

func (o *SoakOptions) flags(fs *flag.FlagSet) {
	fs.DurationVar(&o.Duration, "soak", 0, "run the soak for this long instead of the cases (0: no soak)")
	fs.Float64Var(&o.Rate, "soak-rate", 0, "offered load of the soak in msg/s (0: half the saturated end-to-end rate, measured first)")
	fs.DurationVar(&o.Bucket, "soak-bucket", time.Minute, "length of one reported soak bucket")
	fs.DurationVar(&o.Retention, "soak-retention", time.Minute, "inbox Config.Retention in the soak, short so cleanup deletes during it")
	fs.DurationVar(&o.Maintenance, "soak-maintenance", 10*time.Second, "inbox Config.MaintenanceInterval in the soak")
	fs.DurationVar(&o.StreamExpiry, "soak-stream-expiry", time.Minute, "inbox Config.IdleStreamExpiry in the soak (0: streams are never expired)")
	fs.Float64Var(&o.VacuumCostDelay, "soak-vacuum-cost-delay", -1, "autovacuum_vacuum_cost_delay of inbox_messages and outbox_messages in the soak, in ms (-1: as the migrations set it)")
	fs.BoolVar(&o.Outbox, "soak-outbox", false, "each handler enqueues a follow-up message that a relay publishes (needs -soak-rate)")
}

func (o SoakOptions) validate() error {
	switch {
	case o.Duration < 0 || o.Rate < 0:
		return errors.New("-soak and -soak-rate must not be negative")
	case o.Duration > 0 && (o.Bucket <= 0 || o.Bucket > o.Duration):
		return errors.New("-soak-bucket must be positive and at most -soak")
	case o.Retention <= 0 || o.Maintenance <= 0:
		return errors.New("-soak-retention and -soak-maintenance must be positive")
	case o.StreamExpiry < 0:
		return errors.New("-soak-stream-expiry must not be negative")
	case o.Outbox && o.Rate == 0:
		return errors.New("-soak-outbox needs -soak-rate: the saturated rate is measured without the outbox")
	case o.VacuumCostDelay > 100:
		return errors.New("-soak-vacuum-cost-delay is at most 100 (ms)")
	}
	return nil
}

// Soak is the per-bucket record of a soak run.
type Soak struct {
	OfferedRate float64 `json:"offered_rate"`
	// SaturatedRate is the end-to-end rate measured before the soak, when
	// the offered rate was derived from it.
	SaturatedRate float64 `json:"saturated_rate,omitempty"`
	Published     int     `json:"published"`
	Settings      string  `json:"settings"`
	// Outbox says the handlers enqueued follow-ups (-soak-outbox).
	Outbox  bool         `json:"outbox,omitempty"`
	Buckets []SoakBucket `json:"buckets"`
}

// SoakBucket is what one bucket (a minute by default) of the soak saw.
type SoakBucket struct {
	// End is the bucket's end, since the soak began.
	EndSeconds float64 `json:"end_seconds"`
	Handled    int     `json:"handled"`
	Rate       float64 `json:"rate_per_sec"`
	// End-to-end latency, publish to handler start, of the messages
	// handled in the bucket.
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
	// Claims times the claim statements of the bucket (see claimTracer).
	Claims ClaimLatency `json:"claims"`
	// Sizes at the bucket's end: inbox_messages without its indexes (with
	// TOAST), its indexes, and inbox_streams with its indexes.
	MessagesTableMiB   float64 `json:"messages_table_mib"`
	MessagesIndexesMiB float64 `json:"messages_indexes_mib"`
	StreamsMiB         float64 `json:"streams_mib"`
	Rows               int64   `json:"rows"`
	StreamRows         int64   `json:"stream_rows"`
	DeadTuples         int64   `json:"dead_tuples"`
	// OldestSnapshotSeconds is the age of the oldest client transaction
	// on the server that holds a snapshot: vacuum can remove no row
	// version deleted after it began, whoever runs it. (Autovacuum's own
	// workers hold one too, but other vacuums and pruning pass over it.)
	OldestSnapshotSeconds float64 `json:"oldest_snapshot_seconds"`
	RSSMiB                float64 `json:"rss_mib"`
	HeapInuseMiB          float64 `json:"heap_inuse_mib"`
	// What the server did during the bucket, from its statistics:
	// checkpoints, autovacuum runs finished on inbox_messages (and
	// outbox_messages), and WAL written. A latency spike beside one of
	// them has its likely cause.
	Checkpoints   int64   `json:"checkpoints"`
	InboxVacuums  int64   `json:"inbox_vacuums"`
	OutboxVacuums int64   `json:"outbox_vacuums"`
	WALMiB        float64 `json:"wal_mib"`
	// outbox_messages at the bucket's end, in a soak with -soak-outbox:
	// sizes, rows, dead tuples and messages not sent yet.
	OutboxTableMiB   float64 `json:"outbox_table_mib,omitempty"`
	OutboxIndexesMiB float64 `json:"outbox_indexes_mib,omitempty"`
	OutboxRows       int64   `json:"outbox_rows,omitempty"`
	OutboxDeadTuples int64   `json:"outbox_dead_tuples,omitempty"`
	OutboxUnsent     int64   `json:"outbox_unsent,omitempty"`
}

// soakStreamLen is how many messages each soak stream carries: every other
// message is ordered, in streams of this many, so new streams keep coming
// and old ones go idle (and expire, after -soak-stream-expiry).
const soakStreamLen = 10

func soakHeaders(i int) amqp091.Table {
	if i%2 == 0 {
		return nil
	}
	k := i / 2
	return amqp091.Table{amqp.DefaultStreamHeader: fmt.Sprintf("s-%d", k/soakStreamLen), amqp.DefaultSequenceHeader: int64(k%soakStreamLen + 1)}
}

// soak measures the saturated end-to-end rate unless -soak-rate gives one,
// then runs the soak at half of it.
func (b *bench) soak(ctx context.Context) error {
	br, err := b.amqp()
	if err != nil {
		return err
	}
	o := b.opts.Soak
	rate, saturated := o.Rate, 0.0
	if rate == 0 {
		res, err := runLatency(ctx, br, b.opts.Messages, 0, b.opts.Body, b.inboxConfig(), b.receiverConfig)
		if err != nil {
			return fmt.Errorf("saturation before the soak: %w", err)
		}
		b.record(latencySaturationID, "Latency at saturation (end to end)", res)
		saturated, rate = res.Rate, res.Rate/2
	}
	logf("soak: %s at %.0f msg/s", o.Duration, rate)
	s, err := runSoak(ctx, br, o, rate, b.opts.Body, b.inboxConfig(), b.receiverConfig)
	if s != nil {
		s.SaturatedRate = saturated
		b.rep.Soak = s
	}
	return err
}

// soakWindow collects the latencies of one bucket from concurrent handlers.
type soakWindow struct {
	mu      sync.Mutex
	lat     latencies
	handled int
}

func (w *soakWindow) add(d time.Duration, timed bool) {
	w.mu.Lock()
	w.handled++
	if timed {
		w.lat.samples = append(w.lat.samples, d)
	}
	w.mu.Unlock()
}

func (w *soakWindow) take() (Latency, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s, n := w.lat.summary(), w.handled
	w.lat.samples, w.handled = nil, 0
	return s, n
}

// runSoak runs the receiver and the inbox's workers with retention cleanup
// on, publishes at rate for o.Duration and samples every o.Bucket. On an
// error it returns the buckets so far with it.
func runSoak(ctx context.Context, br *broker, o SoakOptions, rate float64, bodySize int, cfg inbox.Config, rcfg func(queue string) amqp.Config) (*Soak, error) {
	claims := &claimTracer{}
	pool, err := newTracedPool(ctx, "bench soak", int32(cfg.Workers+6), claims)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	schema, drop, err := inboxSchema(ctx, pool, "bench_soak")
	if err != nil {
		return nil, err
	}
	defer drop()
	vacuum := "autovacuum_vacuum_cost_delay of the tables as migrated"
	if o.VacuumCostDelay >= 0 {
		vacuum = fmt.Sprintf("autovacuum_vacuum_cost_delay=%gms on inbox_messages and outbox_messages", o.VacuumCostDelay)
		for _, table := range []string{"inbox_messages", "outbox_messages"} {
			if _, err := pool.Exec(ctx, fmt.Sprintf("ALTER TABLE %s SET (autovacuum_vacuum_cost_delay = %g)",
				pgx.Identifier{schema, table}.Sanitize(), o.VacuumCostDelay)); err != nil {
				return nil, fmt.Errorf("set the vacuum cost delay of %s: %w", table, err)
			}
		}
	}
	queue, del, err := br.declareQueue("bench_soak", nil)
	if err != nil {
		return nil, err
	}
	defer del()
	var ob *inbox.Outbox
	var sink string
	if o.Outbox {
		// The follow-ups go to a queue that keeps the newest 10,000: the
		// broker confirms each, and nothing has to consume them.
		var delSink func()
		if sink, delSink, err = br.declareQueue("bench_soak_sink", amqp091.Table{"x-max-length": int32(10_000)}); err != nil {
			return nil, err
		}
		defer delSink()
		if ob, err = inbox.NewOutbox(pool, inbox.OutboxConfig{Schema: schema, Retention: o.Retention, Logger: quietLogger()}); err != nil {
			return nil, err
		}
	}

	cfg.Schema, cfg.Logger = schema, quietLogger()
	cfg.Retention, cfg.MaintenanceInterval, cfg.IdleStreamExpiry = o.Retention, o.Maintenance, o.StreamExpiry
	in, err := inbox.New(pool, cfg)
	if err != nil {
		return nil, err
	}
	var win soakWindow
	in.Handle(benchTopic, func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		sent, ok := sentAt(m.Body)
		win.add(time.Since(sent), ok && m.Attempt == 1)
		if ob == nil {
			return nil
		}
		_, err := ob.Enqueue(ctx, tx, inbox.OutgoingMessage{RoutingKey: sink, Type: "bench.followup", Body: m.Body})
		return err
	})
	if err := in.Start(ctx); err != nil {
		return nil, err
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := in.Stop(stopCtx); err != nil {
			logf("warning: stop inbox: %v", err)
		}
	}()
	rcv, err := amqp.NewReceiver(in, rcfg(queue))
	if err != nil {
		return nil, err
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	wait := runReceiver(runCtx, rcv)
	defer func() { stop(); _ = wait() }()
	if ob != nil {
		relay, err := amqp.NewRelay(ob, amqp.RelayConfig{URL: amqpURL(), Logger: quietLogger()})
		if err != nil {
			return nil, err
		}
		waitRelay := runRelay(runCtx, relay)
		defer func() { stop(); _ = waitRelay() }()
	}
	if err := pollUntil(ctx, 30*time.Second, 10*time.Millisecond, func() bool {
		q, err := br.inspect(queue)
		return err == nil && q.Consumers > 0
	}); err != nil {
		return nil, fmt.Errorf("receiver did not start consuming: %w", err)
	}

	var autovacuum string
	if err := pool.QueryRow(ctx, "SHOW autovacuum").Scan(&autovacuum); err != nil {
		return nil, fmt.Errorf("read the server's autovacuum setting: %w", err)
	}
	rc := rcv.Config()
	ic := in.Config()
	outbox := ""
	if ob != nil {
		outbox = fmt.Sprintf(", each handler enqueues a follow-up that a Relay publishes (outbox Retention=%s)", ob.Config().Retention)
	}
	s := &Soak{
		OfferedRate: rate,
		Outbox:      ob != nil,
		Published:   int(rate * o.Duration.Seconds()),
		Settings: fmt.Sprintf("%s, inbox Workers=%d BatchSize=%d Retention=%s MaintenanceInterval=%s CleanupBatch=%d IdleStreamExpiry=%s, every other message in streams of %d, server autovacuum=%s, %s",
			receiverSettings(rc), ic.Workers, ic.BatchSize, ic.Retention, ic.MaintenanceInterval, ic.CleanupBatch, ic.IdleStreamExpiry, soakStreamLen, autovacuum, vacuum) + outbox,
	}
	sizes := newSizeQuery(schema)
	var before soakCounters
	if before, err = sizes.read(ctx, pool, &SoakBucket{}); err != nil {
		return nil, err
	}
	pubCtx, cancelPub := context.WithCancel(ctx)
	defer cancelPub()
	published := make(chan error, 1)
	buckets := max(1, int(o.Duration/o.Bucket))
	claims.take()
	win.take()
	start := time.Now()
	go func() { published <- br.publishPaced(pubCtx, queue, s.Published, rate, bodySize, soakHeaders) }()
	ticker := time.NewTicker(o.Bucket)
	defer ticker.Stop()
	last := start
	for len(s.Buckets) < buckets {
		select {
		case <-ctx.Done():
			return s, ctx.Err()
		case err := <-published:
			if err != nil {
				return s, fmt.Errorf("publish: %w", err)
			}
			published = nil // done: sample the buckets that are left
		case now := <-ticker.C:
			bk := SoakBucket{EndSeconds: now.Sub(start).Seconds()}
			lat, handled := win.take()
			bk.Handled, bk.Rate = handled, float64(handled)/now.Sub(last).Seconds()
			bk.P50Ms, bk.P99Ms = lat.P50Ms, lat.P99Ms
			bk.Claims = *summarizeClaims(claims.take())
			cur, err := sizes.read(ctx, pool, &bk)
			if err != nil {
				return s, err
			}
			bk.Checkpoints, bk.InboxVacuums, bk.OutboxVacuums = cur.checkpoints-before.checkpoints,
				cur.inboxVacuums-before.inboxVacuums, cur.outboxVacuums-before.outboxVacuums
			bk.WALMiB = float64(cur.walBytes-before.walBytes) / (1 << 20)
			before = cur
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			bk.RSSMiB, bk.HeapInuseMiB = float64(rssBytes())/(1<<20), float64(ms.HeapInuse)/(1<<20)
			s.Buckets = append(s.Buckets, bk)
			last = now
			logf("  soak %6.0fs: %6.0f msg/s, p50 %.1f ms, p99 %.1f ms, claim p50 %.2f ms, table %.1f MiB, indexes %.1f MiB, %d dead tuples, oldest snapshot %.0f s, RSS %.0f MiB; %d checkpoints, %d+%d vacuums, %.0f MiB WAL; outbox %.1f+%.1f MiB, %d dead, %d unsent",
				bk.EndSeconds, bk.Rate, bk.P50Ms, bk.P99Ms, bk.Claims.P50Ms, bk.MessagesTableMiB, bk.MessagesIndexesMiB, bk.DeadTuples, bk.OldestSnapshotSeconds, bk.RSSMiB,
				bk.Checkpoints, bk.InboxVacuums, bk.OutboxVacuums, bk.WALMiB, bk.OutboxTableMiB, bk.OutboxIndexesMiB, bk.OutboxDeadTuples, bk.OutboxUnsent)
		}
	}
	cancelPub()
	if published != nil {
		if err := <-published; err != nil && !errors.Is(err, context.Canceled) {
			return s, fmt.Errorf("publish: %w", err)
		}
	}
	return s, nil
}

// sizeQuery reads the soak's tables' sizes and dead tuples, and the
// server's counters.
type sizeQuery struct{ sql, messages, streams, outbox string }

// soakCounters are the server's running totals that a bucket reports the
// growth of.
type soakCounters struct{ checkpoints, inboxVacuums, outboxVacuums, walBytes int64 }

func newSizeQuery(schema string) sizeQuery {
	q := pgx.Identifier{schema}.Sanitize()
	return sizeQuery{
		messages: q + ".inbox_messages",
		streams:  q + ".inbox_streams",
		outbox:   q + ".outbox_messages",
		sql: `
SELECT pg_table_size($1::regclass), pg_indexes_size($1::regclass), pg_total_relation_size($2::regclass),
       coalesce((SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = $1::regclass), 0),
       (SELECT count(*) FROM ` + q + `.inbox_messages), (SELECT count(*) FROM ` + q + `.inbox_streams),
       coalesce((SELECT greatest(extract(epoch FROM now() - min(xact_start)), 0) FROM pg_stat_activity
                 WHERE backend_xmin IS NOT NULL AND backend_type = 'client backend' AND pid <> pg_backend_pid()), 0),
       pg_table_size($3::regclass), pg_indexes_size($3::regclass),
       coalesce((SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = $3::regclass), 0),
       (SELECT count(*) FROM ` + q + `.outbox_messages), (SELECT count(*) FROM ` + q + `.outbox_messages WHERE state = 'pending'),
       (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter),
       coalesce((SELECT autovacuum_count FROM pg_stat_user_tables WHERE relid = $1::regclass), 0),
       coalesce((SELECT autovacuum_count FROM pg_stat_user_tables WHERE relid = $3::regclass), 0),
       pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint`,
	}
}

// read fills bk's sizes and returns the server's counters.
func (q sizeQuery) read(ctx context.Context, pool interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, bk *SoakBucket) (soakCounters, error) {
	var table, indexes, streams, outboxTable, outboxIndexes int64
	var c soakCounters
	if err := pool.QueryRow(ctx, q.sql, q.messages, q.streams, q.outbox).Scan(&table, &indexes, &streams, &bk.DeadTuples, &bk.Rows, &bk.StreamRows,
		&bk.OldestSnapshotSeconds, &outboxTable, &outboxIndexes, &bk.OutboxDeadTuples, &bk.OutboxRows, &bk.OutboxUnsent,
		&c.checkpoints, &c.inboxVacuums, &c.outboxVacuums, &c.walBytes); err != nil {
		return c, fmt.Errorf("read table sizes: %w", err)
	}
	const mib = 1 << 20
	bk.MessagesTableMiB, bk.MessagesIndexesMiB, bk.StreamsMiB = float64(table)/mib, float64(indexes)/mib, float64(streams)/mib
	bk.OutboxTableMiB, bk.OutboxIndexesMiB = float64(outboxTable)/mib, float64(outboxIndexes)/mib
	return c, nil
}

// compare adds the soak's last-bucket-over-first ratios to r.
func (s *Soak) compare(r *Report) {
	if len(s.Buckets) < 2 {
		return
	}
	first, last := s.Buckets[0], s.Buckets[len(s.Buckets)-1]
	ratio := func(name string, a, b float64, op string, target float64) {
		if b > 0 {
			r.add(Comparison{Name: "soak, last vs first bucket: " + name, Value: a / b, Unit: "x", Op: op, Target: target})
		}
	}
	ratio("latency p50", last.P50Ms, first.P50Ms, "<=", targetSoakFlat)
	ratio("latency p99", last.P99Ms, first.P99Ms, "<=", targetSoakFlat)
	ratio("claim p50", last.Claims.P50Ms, first.Claims.P50Ms, "<=", targetSoakFlat)
	ratio("claim p99", last.Claims.P99Ms, first.Claims.P99Ms, "<=", targetSoakFlat)
	ratio("messages table + indexes", last.MessagesTableMiB+last.MessagesIndexesMiB, first.MessagesTableMiB+first.MessagesIndexesMiB, "", 0)
	ratio("inbox_streams size", last.StreamsMiB, first.StreamsMiB, "", 0)
	ratio("RSS", last.RSSMiB, first.RSSMiB, "", 0)
}

// writeMarkdown writes the per-bucket table.
func (s *Soak) writeMarkdown(b *strings.Builder) {
	fmt.Fprintf(b, "\nSoak at %s msg/s offered", thousands(s.OfferedRate))
	if s.SaturatedRate > 0 {
		fmt.Fprintf(b, " (half the saturated end-to-end rate of %s msg/s)", thousands(s.SaturatedRate))
	}
	fmt.Fprintf(b, ", %d messages; %s.\n\n", s.Published, s.Settings)
	b.WriteString("| End (s) | Handled (msg/s) | Latency p50 / p99 (ms) | Claim p50 / p99 (ms) | Messages table / indexes (MiB) | Rows | Dead tuples | Oldest snapshot (s) | Streams (rows, MiB) | RSS / heap (MiB) | Checkpoints, vacuums, WAL (MiB) |")
	if s.Outbox {
		b.WriteString(" Outbox table / indexes (MiB) | Outbox rows, dead, unsent |")
	}
	b.WriteString("\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	if s.Outbox {
		b.WriteString("---:|---:|")
	}
	b.WriteString("\n")
	for _, k := range s.Buckets {
		fmt.Fprintf(b, "| %.0f | %s | %.1f / %.1f | %.2f / %.2f | %.1f / %.1f | %d | %d | %.0f | %d, %.1f | %.0f / %.1f | %d, %d, %.0f |",
			k.EndSeconds, thousands(k.Rate), k.P50Ms, k.P99Ms, k.Claims.P50Ms, k.Claims.P99Ms,
			k.MessagesTableMiB, k.MessagesIndexesMiB, k.Rows, k.DeadTuples, k.OldestSnapshotSeconds, k.StreamRows, k.StreamsMiB, k.RSSMiB, k.HeapInuseMiB,
			k.Checkpoints, k.InboxVacuums+k.OutboxVacuums, k.WALMiB)
		if s.Outbox {
			fmt.Fprintf(b, " %.1f / %.1f | %d, %d, %d |", k.OutboxTableMiB, k.OutboxIndexesMiB, k.OutboxRows, k.OutboxDeadTuples, k.OutboxUnsent)
		}
		b.WriteString("\n")
	}
}
