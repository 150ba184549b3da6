package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/amqp"
)

// naiveMaxMessages caps the naive consumer's rounds: it works one message
// at a time at a steady pace, so a few thousand give its rate, and the full
// count would only make the run longer.
const naiveMaxMessages = 5000

// ceilingsAndIngest runs rounds of the database ceiling, the broker
// ceiling, the inbox receiver, the naive consumer and Watermill, each as
// -only selects,
// one after the other in every round, so other load on the machine falls on
// all of them alike.
func (b *bench) ceilingsAndIngest(ctx context.Context) error {
	ceilings, ingest := b.opts.runs("ceiling"), b.opts.runs("ingest")
	br, err := b.amqp()
	if err != nil {
		return err
	}
	var db, broker, receiver, naive, wm []Result
	for range b.opts.Rounds {
		if ceilings {
			res, err := runDBCeiling(ctx, b.opts.Messages, b.opts.Body)
			if err != nil {
				return fmt.Errorf("database ceiling: %w", err)
			}
			db = append(db, res)
			if res, err = runBrokerCeiling(ctx, br, b.opts.Messages, b.opts.Body); err != nil {
				return fmt.Errorf("broker ceiling: %w", err)
			}
			broker = append(broker, res)
		}
		if ingest {
			res, err := runReceiverIngest(ctx, br, b.opts.Messages, b.opts.Body, b.receiverConfig)
			if err != nil {
				return fmt.Errorf("inbox receiver: %w", err)
			}
			receiver = append(receiver, res)
			if res, err = runNaiveIngest(ctx, br, min(b.opts.Messages, naiveMaxMessages), b.opts.Body); err != nil {
				return fmt.Errorf("naive consumer: %w", err)
			}
			naive = append(naive, res)
			if res, err = runWatermillIngest(ctx, br, b.opts.Messages, b.opts.Body, b.receiverPrefetch()); err != nil {
				return fmt.Errorf("watermill: %w", err)
			}
			wm = append(wm, res)
		}
	}
	if ceilings {
		b.record(resultDBCeiling, "Database ceiling: batched INSERT", best(db))
		b.record(resultBrokerCeiling, "Broker ceiling: consume and ack only", best(broker))
	}
	if ingest {
		b.record(resultIngestInbox, "Ingest: inbox amqp receiver", best(receiver))
		b.record(resultIngestNaive, "Ingest: naive consumer, INSERT then ack", best(naive))
		b.record(resultIngestWatermill, "Ingest peer: Watermill AMQP router, no-op handler", best(wm))
	}
	return nil
}

// receiverConfig is the receiver's configuration in the benchmark: the
// library's defaults unless the -receiver flags say otherwise.
func (b *bench) receiverConfig(queue string) amqp.Config {
	return amqp.Config{URL: amqpURL(), Queue: queue, Logger: quietLogger(),
		Prefetch: b.opts.ReceiverPrefetch, BatchSize: b.opts.ReceiverBatch, BatchLinger: b.opts.ReceiverLinger}
}

// receiverPrefetch is the receiver's prefetch in the benchmark, which the
// Watermill peer gets too.
func (b *bench) receiverPrefetch() int {
	if b.opts.ReceiverPrefetch > 0 {
		return b.opts.ReceiverPrefetch
	}
	return amqp.DefaultPrefetch
}

func receiverSettings(cfg amqp.Config) string {
	return fmt.Sprintf("Prefetch=%d BatchSize=%d BatchLinger=%s", cfg.Prefetch, cfg.BatchSize, cfg.BatchLinger)
}

// timedStore wraps the inbox as the receiver's Store and adds up the time
// spent in Store, so a result can say how much of the ingest time was the
// database's.
type timedStore struct {
	*inbox.Inbox
	mu       sync.Mutex
	calls    int
	messages int
	busy     time.Duration
}

func (s *timedStore) Store(ctx context.Context, msgs ...inbox.Message) (inbox.StoreResult, error) {
	start := time.Now()
	res, err := s.Inbox.Store(ctx, msgs...)
	s.mu.Lock()
	s.calls++
	s.messages += len(msgs)
	s.busy += time.Since(start)
	s.mu.Unlock()
	return res, err
}

// summary says how the receiver's time went, over elapsed.
func (s *timedStore) summary(elapsed time.Duration) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.calls == 0 {
		return "no store calls"
	}
	return fmt.Sprintf("%d Store calls of %.0f messages on average, %.1f ms each, %.0f%% of the time in Store",
		s.calls, float64(s.messages)/float64(s.calls), float64(s.busy.Microseconds())/1000/float64(s.calls),
		100*s.busy.Seconds()/elapsed.Seconds())
}

// runReceiver runs rcv until ctx ends, in a goroutine; wait waits for it.
func runReceiver(ctx context.Context, rcv *amqp.Receiver) (wait func() error) {
	var wg sync.WaitGroup
	var err error
	wg.Add(1)
	go func() {
		defer wg.Done()
		err = rcv.Run(ctx)
	}()
	return func() error { wg.Wait(); return err }
}

// runReceiverIngest publishes n messages, then runs the inbox's amqp
// receiver on the queue and measures how long until all are stored and
// acked. The inbox's workers do not run: this is ingest alone.
func runReceiverIngest(ctx context.Context, br *broker, n, bodySize int, rcfg func(queue string) amqp.Config) (Result, error) {
	pool, err := newPool(ctx, "bench ingest", 4)
	if err != nil {
		return Result{}, err
	}
	defer pool.Close()
	schema, drop, err := inboxSchema(ctx, pool, "bench_ingest")
	if err != nil {
		return Result{}, err
	}
	defer drop()
	queue, del, err := br.declareQueue("bench_ingest", nil)
	if err != nil {
		return Result{}, err
	}
	defer del()
	if err := br.publishBacklog(ctx, queue, n, bodySize, benchTopic, ""); err != nil {
		return Result{}, err
	}
	in, err := inbox.New(pool, inbox.Config{Schema: schema, Logger: quietLogger()})
	if err != nil {
		return Result{}, err
	}
	store := &timedStore{Inbox: in}
	rcv, err := amqp.NewReceiver(store, rcfg(queue))
	if err != nil {
		return Result{}, err
	}

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	cpu, start := startCPU(), time.Now()
	wait := runReceiver(runCtx, rcv)
	waitErr := pollUntil(ctx, 2*time.Minute, time.Millisecond, func() bool { return rcv.Stats().Acked >= uint64(n) })
	elapsed := time.Since(start)
	cpuUse := cpu.stop(n)
	stop()
	if err := wait(); err != nil {
		return Result{}, err
	}
	stats := rcv.Stats()
	if waitErr != nil {
		return Result{}, fmt.Errorf("%d of %d acked (stats %+v): %w", stats.Acked, n, stats, waitErr)
	}
	var stored int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{schema}.Sanitize()+".inbox_messages").Scan(&stored); err != nil {
		return Result{}, fmt.Errorf("count stored: %w", err)
	}
	if stored != n {
		return Result{}, fmt.Errorf("stored %d rows for %d messages", stored, n)
	}
	if q, err := br.inspect(queue); err != nil || q.Messages != 0 {
		return Result{}, fmt.Errorf("after ingest %d messages are left in the queue (%v)", q.Messages, err)
	}
	return Result{
		Messages: n,
		Seconds:  elapsed.Seconds(),
		Rate:     float64(n) / elapsed.Seconds(),
		CPU:      cpuUse,
		Settings: receiverSettings(rcv.Config()) + ", pre-published queue; " + store.summary(elapsed),
	}, nil
}

// runNaiveIngest drains n pre-published messages with the consumer many
// services start with: one autocommitted INSERT per delivery, then its ack.
func runNaiveIngest(ctx context.Context, br *broker, n, bodySize int) (Result, error) {
	const prefetch = 100
	pool, err := newPool(ctx, "bench naive", 2)
	if err != nil {
		return Result{}, err
	}
	defer pool.Close()
	schema, drop, err := inboxSchema(ctx, pool, "bench_naive")
	if err != nil {
		return Result{}, err
	}
	defer drop()
	queue, ch, cleanup, err := br.backlogConsumer(ctx, "bench_naive", n, bodySize, prefetch)
	if err != nil {
		return Result{}, err
	}
	defer cleanup()
	insert := `INSERT INTO ` + pgx.Identifier{schema}.Sanitize() + `.inbox_messages (source, message_id, topic, body)
VALUES ($1, $2, $3, $4) ON CONFLICT (source, message_id) DO NOTHING`
	start := time.Now()
	deliveries, err := ch.ConsumeWithContext(ctx, queue, "", false, false, false, false, nil)
	if err != nil {
		return Result{}, fmt.Errorf("consume %s: %w", queue, err)
	}
	for got := 0; got < n; got++ {
		d, err := nextDelivery(ctx, deliveries)
		if err != nil {
			return Result{}, err
		}
		if _, err := pool.Exec(ctx, insert, queue, d.MessageId, d.Type, d.Body); err != nil {
			return Result{}, fmt.Errorf("insert delivery %d: %w", got, err)
		}
		if err := d.Ack(false); err != nil {
			return Result{}, fmt.Errorf("ack: %w", err)
		}
	}
	elapsed := time.Since(start)
	_ = ch.Close()
	return Result{
		Messages: n,
		Seconds:  elapsed.Seconds(),
		Rate:     float64(n) / elapsed.Seconds(),
		Settings: fmt.Sprintf("prefetch %d, one INSERT ... ON CONFLICT DO NOTHING and one ack per message", prefetch),
	}, nil
}

// pollUntil calls cond every interval until it is true, ctx ends or limit
// passes.
func pollUntil(ctx context.Context, limit, interval time.Duration, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not done after %s", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
	return nil
}

// latency measures publish-to-handler-start through the whole path:
// publisher, broker, receiver, inbox table, worker. First at a fixed
// offered load, then with everything published at once.
func (b *bench) latency(ctx context.Context) error {
	br, err := b.amqp()
	if err != nil {
		return err
	}
	total := max(1, int(float64(b.opts.Load)*b.opts.LatencyDuration.Seconds()))
	res, err := runLatency(ctx, br, total, float64(b.opts.Load), b.opts.Body, b.inboxConfig(), b.receiverConfig)
	if err != nil {
		return fmt.Errorf("fixed load: %w", err)
	}
	b.record(latencyFixedID, fmt.Sprintf("Latency at %s msg/s", thousands(float64(b.opts.Load))), res)
	res, err = runLatency(ctx, br, b.opts.Messages, 0, b.opts.Body, b.inboxConfig(), b.receiverConfig)
	if err != nil {
		return fmt.Errorf("saturation: %w", err)
	}
	b.record(latencySaturationID, "Latency at saturation (end to end)", res)
	return nil
}

// runLatency runs the receiver and the inbox's workers in this process,
// publishes total messages at rate per second (0: as fast as it can) and
// records, in the handler, how long after its publication each message
// started being handled.
func runLatency(ctx context.Context, br *broker, total int, rate float64, bodySize int, cfg inbox.Config, rcfg func(queue string) amqp.Config) (Result, error) {
	pool, err := newPool(ctx, "bench latency", int32(cfg.Workers+6))
	if err != nil {
		return Result{}, err
	}
	defer pool.Close()
	schema, drop, err := inboxSchema(ctx, pool, "bench_latency")
	if err != nil {
		return Result{}, err
	}
	defer drop()
	queue, del, err := br.declareQueue("bench_latency", nil)
	if err != nil {
		return Result{}, err
	}
	defer del()

	cfg.Schema = schema
	cfg.Logger = quietLogger()
	// The body carries the publication time.
	c, stopConsumer, err := startLatencyConsumer(ctx, br, pool, queue, total, cfg, rcfg,
		func(m *inbox.Message) (time.Time, bool) { return sentAt(m.Body) })
	defer stopConsumer()
	if err != nil {
		return Result{}, err
	}

	start := time.Now()
	if err := br.publishPaced(ctx, queue, total, rate, bodySize, nil); err != nil {
		return Result{}, err
	}
	published := time.Since(start)
	select {
	case <-c.handled.reached:
	case <-ctx.Done():
		return Result{}, ctx.Err()
	case <-time.After(2*time.Minute + published):
		return Result{}, fmt.Errorf("%d of %d messages handled after %s", c.handled.n.Load(), total, 2*time.Minute)
	}
	elapsed := time.Since(start)
	l := c.summary(rate, total, elapsed)
	settings := receiverSettings(c.rcv.Config()) + fmt.Sprintf(", inbox Workers=%d BatchSize=%d", c.in.Config().Workers, c.in.Config().BatchSize)
	if rate == 0 {
		settings += fmt.Sprintf(", %d messages published at once (%.0f msg/s publishing)", total, float64(total)/published.Seconds())
	} else {
		settings += fmt.Sprintf(", %d messages over %s", total, published.Round(time.Millisecond))
	}
	return Result{
		Messages: total,
		Seconds:  elapsed.Seconds(),
		Rate:     l.AchievedRate,
		Latency:  &l,
		Settings: settings,
	}, nil
}
