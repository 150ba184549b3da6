package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"golang.org/x/sync/errgroup"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/amqp"
)

// relayLoadBatch is how many messages one transaction enqueues when the
// throughput case fills the outbox before it starts the relay.
const relayLoadBatch = 1000

// relayProducers enqueue the fixed-rate latency run's messages, each in a
// transaction of its own, so that one slow commit does not hold the pace.
const relayProducers = 16

// relay compares the outbox relay with plain amqp091-go publishing with
// confirms, in alternating rounds, then measures the latency from a
// commit that enqueues a message to the downstream handler at a fixed rate.
func (b *bench) relay(ctx context.Context) error {
	br, err := b.amqp()
	if err != nil {
		return err
	}
	var raw, relayed []Result
	for range b.opts.Rounds {
		res, err := runRawConfirmed(ctx, br, b.opts.Messages, b.opts.Body, b.opts.RelayBatch)
		if err != nil {
			return fmt.Errorf("raw publishing: %w", err)
		}
		raw = append(raw, res)
		if res, err = runRelayThroughput(ctx, br, b.opts.Messages, b.opts.Body, b.opts.RelayBatch); err != nil {
			return fmt.Errorf("relay: %w", err)
		}
		relayed = append(relayed, res)
	}
	b.record(resultRelayRaw, "Publishing ceiling: amqp091-go with confirms", best(raw))
	b.record(resultRelayInbox, "Relay: outbox to RabbitMQ with confirms", best(relayed))
	total := max(1, int(float64(b.opts.RelayLoad)*b.opts.LatencyDuration.Seconds()))
	res, err := runRelayLatency(ctx, br, total, float64(b.opts.RelayLoad), b.opts.Body, b.inboxConfig(), b.receiverConfig)
	if err != nil {
		return fmt.Errorf("relay latency: %w", err)
	}
	b.record(resultRelayLatency, fmt.Sprintf("Relay latency at %s msg/s: commit to downstream handler", thousands(float64(b.opts.RelayLoad))), res)
	return nil
}

// runRawConfirmed publishes n persistent messages of bodySize bytes to a
// fresh durable queue, on a connection of its own, in batches of batch:
// each batch published with the mandatory flag, then its confirms awaited,
// as the relay does. The fastest a publisher that knows each message's fate
// can go with that many in flight.
func runRawConfirmed(ctx context.Context, br *broker, n, bodySize, batch int) (Result, error) {
	queue, del, err := br.declareQueue("bench_raw", nil)
	if err != nil {
		return Result{}, err
	}
	defer del()
	conn, err := amqp091.Dial(amqpURL())
	if err != nil {
		return Result{}, fmt.Errorf("connect publisher: %w", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return Result{}, fmt.Errorf("open channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		return Result{}, fmt.Errorf("confirm mode: %w", err)
	}
	run := uniqueName("m")
	start := time.Now()
	confirms := make([]*amqp091.DeferredConfirmation, 0, batch)
	for from := 0; from < n; from += batch {
		confirms = confirms[:0]
		for i := from; i < min(from+batch, n); i++ {
			dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, amqp091.Publishing{
				DeliveryMode: amqp091.Persistent,
				MessageId:    fmt.Sprintf("%s-%d", run, i),
				Type:         benchTopic,
				Body:         body(bodySize, time.Now()),
			})
			if err != nil {
				return Result{}, fmt.Errorf("publish message %d: %w", i, err)
			}
			confirms = append(confirms, dc)
		}
		for _, dc := range confirms {
			ok, err := dc.WaitContext(ctx)
			if err != nil {
				return Result{}, fmt.Errorf("wait for confirm: %w", err)
			}
			if !ok {
				return Result{}, fmt.Errorf("broker nacked a message published to %s", queue)
			}
		}
	}
	elapsed := time.Since(start)
	if err := checkQueued(br, queue, n); err != nil {
		return Result{}, err
	}
	return Result{
		Messages: n,
		Seconds:  elapsed.Seconds(),
		Rate:     float64(n) / elapsed.Seconds(),
		Settings: fmt.Sprintf("batches of %d published (mandatory) then their confirms awaited, %d-byte persistent messages, durable queue", batch, bodySize),
	}, nil
}

// runRelayThroughput fills a fresh outbox with n unordered messages, then
// runs a Relay with BatchSize batch and measures how long until all are
// confirmed by the broker and marked sent. The clock starts with Run, so it
// includes connecting (a few milliseconds).
func runRelayThroughput(ctx context.Context, br *broker, n, bodySize, batch int) (Result, error) {
	// The claims are timed, to show how much of the relay's time is the
	// database's (the filling transactions hold no claim).
	tracer := &claimTracer{}
	pool, err := newTracedPool(ctx, "bench relay", 8, tracer)
	if err != nil {
		return Result{}, err
	}
	defer pool.Close()
	_, queue, ob, cleanup, err := relayFixture(ctx, br, pool, "bench_relay")
	defer cleanup()
	if err != nil {
		return Result{}, err
	}
	for from := 0; from < n; from += relayLoadBatch {
		msgs := make([]inbox.OutgoingMessage, 0, relayLoadBatch)
		for range min(relayLoadBatch, n-from) {
			msgs = append(msgs, inbox.OutgoingMessage{RoutingKey: queue, Type: benchTopic, Body: body(bodySize, time.Now())})
		}
		if _, err := ob.Send(ctx, msgs...); err != nil {
			return Result{}, fmt.Errorf("fill the outbox: %w", err)
		}
	}
	relay, err := amqp.NewRelay(ob, amqp.RelayConfig{URL: amqpURL(), BatchSize: batch, Logger: quietLogger()})
	if err != nil {
		return Result{}, err
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	start := time.Now()
	wait := runRelay(runCtx, relay)
	defer func() { stop(); _ = wait() }()
	err = pollUntil(ctx, 2*time.Minute, time.Millisecond, func() bool { return relay.Stats().Confirmed >= uint64(n) })
	elapsed := time.Since(start)
	if err != nil {
		return Result{}, fmt.Errorf("%d of %d messages confirmed: %w", relay.Stats().Confirmed, n, err)
	}
	stop()
	if err := wait(); err != nil {
		return Result{}, err
	}
	if err := checkQueued(br, queue, n); err != nil {
		return Result{}, err
	}
	st := relay.Stats()
	return Result{
		Messages: n,
		Seconds:  elapsed.Seconds(),
		Rate:     float64(n) / elapsed.Seconds(),
		Claims:   summarizeClaims(tracer.take()),
		Settings: fmt.Sprintf("Relay BatchSize=%d, %d unordered %d-byte messages enqueued before the start; claim, publish (mandatory, persistent), confirms, mark sent; %d published in all",
			batch, n, bodySize, st.Published),
	}, nil
}

// relayFixture makes a migrated schema named after prefix, with an Outbox
// on it, and a durable queue. cleanup drops what was made; call it also
// when err is not nil.
func relayFixture(ctx context.Context, br *broker, pool *pgxpool.Pool, prefix string) (schema, queue string, ob *inbox.Outbox, cleanup func(), err error) {
	var undo []func()
	cleanup = func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	schema, drop, err := inboxSchema(ctx, pool, prefix)
	if err != nil {
		return "", "", nil, cleanup, err
	}
	undo = append(undo, drop)
	queue, del, err := br.declareQueue(prefix, nil)
	if err != nil {
		return "", "", nil, cleanup, err
	}
	undo = append(undo, del)
	ob, err = inbox.NewOutbox(pool, inbox.OutboxConfig{Schema: schema, Logger: quietLogger()})
	return schema, queue, ob, cleanup, err
}

// runRelayLatency enqueues total messages at rate per second, each in a
// service transaction of its own (as a handler's would be), has a Relay
// publish them to a queue that an inbox consumes, and records in that
// inbox's handler how long after the enqueuing transaction's COMMIT was
// sent each message started being handled.
func runRelayLatency(ctx context.Context, br *broker, total int, rate float64, bodySize int, cfg inbox.Config, rcfg func(queue string) amqp.Config) (Result, error) {
	pool, err := newPool(ctx, "bench relay latency", int32(cfg.Workers+relayProducers+8))
	if err != nil {
		return Result{}, err
	}
	defer pool.Close()
	schema, queue, ob, cleanup, err := relayFixture(ctx, br, pool, "bench_relay_latency")
	defer cleanup()
	if err != nil {
		return Result{}, err
	}
	cfg.Schema = schema
	cfg.Logger = quietLogger()
	// committing holds when each message's COMMIT was sent; it is stored
	// before the commit, so the handler always finds it.
	var committing sync.Map
	c, stopConsumer, err := startLatencyConsumer(ctx, br, pool, queue, total, cfg, rcfg,
		func(m *inbox.Message) (time.Time, bool) {
			at, ok := committing.Load(m.ID)
			if !ok {
				return time.Time{}, false
			}
			return at.(time.Time), true
		})
	defer stopConsumer()
	if err != nil {
		return Result{}, err
	}
	relay, err := amqp.NewRelay(ob, amqp.RelayConfig{URL: amqpURL(), Logger: quietLogger()})
	if err != nil {
		return Result{}, err
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	waitRelay := runRelay(runCtx, relay)
	defer func() { stop(); _ = waitRelay() }()

	run := uniqueName("m")
	start := time.Now()
	if err := enqueuePaced(ctx, total, rate, func(ctx context.Context, i int) error {
		id := fmt.Sprintf("%s-%d", run, i)
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if _, err := ob.Enqueue(ctx, tx, inbox.OutgoingMessage{ID: id, RoutingKey: queue, Type: benchTopic, Body: body(bodySize, time.Now())}); err != nil {
				return err
			}
			committing.Store(id, time.Now())
			return nil
		})
	}); err != nil {
		return Result{}, err
	}
	enqueued := time.Since(start)
	select {
	case <-c.handled.reached:
	case <-ctx.Done():
		return Result{}, ctx.Err()
	case <-time.After(2 * time.Minute):
		return Result{}, fmt.Errorf("%d of %d messages handled 2m after the last enqueue", c.handled.n.Load(), total)
	}
	elapsed := time.Since(start)
	l := c.summary(rate, total, elapsed)
	rc := relay.Config()
	return Result{
		Messages: total,
		Seconds:  elapsed.Seconds(),
		Rate:     l.AchievedRate,
		Latency:  &l,
		Settings: fmt.Sprintf("%d messages enqueued over %s by %d producers, one transaction each; Relay BatchSize=%d PollInterval=%s with LISTEN; downstream %s, inbox Workers=%d BatchSize=%d; \"to store\" is commit to the downstream inbox row",
			total, enqueued.Round(time.Millisecond), relayProducers, rc.BatchSize, rc.PollInterval, receiverSettings(c.rcv.Config()), c.in.Config().Workers, c.in.Config().BatchSize),
	}, nil
}

// enqueuePaced calls enqueue for 0..total-1 at rate per second, from
// relayProducers goroutines, and returns once every call has returned.
func enqueuePaced(ctx context.Context, total int, rate float64, enqueue func(context.Context, int) error) error {
	g, gctx := errgroup.WithContext(ctx)
	jobs := make(chan int)
	g.Go(func() error {
		defer close(jobs)
		start := time.Now()
		for i := 0; i < total; {
			// Catch up with the schedule, then sleep a little: timers are
			// too coarse to wait out exactly 1/rate between messages.
			if due := min(total, int(time.Since(start).Seconds()*rate)+1); i >= due {
				select {
				case <-gctx.Done():
					return gctx.Err()
				case <-time.After(200 * time.Microsecond):
				}
				continue
			}
			select {
			case jobs <- i:
				i++
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	for range relayProducers {
		g.Go(func() error {
			for i := range jobs {
				if err := enqueue(gctx, i); err != nil {
					return fmt.Errorf("enqueue message %d: %w", i, err)
				}
			}
			return nil
		})
	}
	return g.Wait()
}

// runRelay runs relay until ctx ends, in a goroutine; wait waits for it.
func runRelay(ctx context.Context, relay *amqp.Relay) (wait func() error) {
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()
	var once sync.Once
	var err error
	return func() error {
		once.Do(func() { err = <-done })
		return err
	}
}

// checkQueued verifies that queue holds n messages: what was confirmed
// arrived.
func checkQueued(br *broker, queue string, n int) error {
	q, err := br.inspect(queue)
	if err != nil {
		return err
	}
	if q.Messages != n {
		return fmt.Errorf("queue %s holds %d messages, want %d", queue, q.Messages, n)
	}
	return nil
}
