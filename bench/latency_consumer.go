package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/amqp"
)

// latencyConsumer is an inbox consuming a queue through the receiver, whose
// handler records for each message's first attempt (none should fail here)
// the time since it was sent, split at its row's received_at. The latency
// runs of the inbox and of the relay share it.
type latencyConsumer struct {
	in                      *inbox.Inbox
	rcv                     *amqp.Receiver
	lat, toStore, toHandler latencies
	handled                 *counter
}

// startLatencyConsumer starts an inbox with cfg on pool and its receiver
// on queue, and returns once the receiver consumes (so its set-up does not
// count as latency). sent tells when a message was sent. stop stops the
// receiver, then the inbox; call it also when err is not nil.
func startLatencyConsumer(ctx context.Context, br *broker, pool *pgxpool.Pool, queue string, total int, cfg inbox.Config,
	rcfg func(queue string) amqp.Config, sent func(*inbox.Message) (time.Time, bool)) (c *latencyConsumer, stop func(), err error) {
	var stops []func()
	stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	c = &latencyConsumer{handled: newCounter(total)}
	if c.in, err = inbox.New(pool, cfg); err != nil {
		return nil, stop, err
	}
	c.in.Handle(benchTopic, func(_ context.Context, _ pgx.Tx, m *inbox.Message) error {
		now := time.Now()
		if at, ok := sent(m); ok && m.Attempt == 1 {
			c.lat.add(now.Sub(at))
			c.toStore.add(m.ReceivedAt.Sub(at))
			c.toHandler.add(now.Sub(m.ReceivedAt))
		}
		c.handled.add()
		return nil
	})
	if err := c.in.Start(ctx); err != nil {
		return nil, stop, err
	}
	stops = append(stops, func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.in.Stop(stopCtx); err != nil {
			logf("warning: stop inbox: %v", err)
		}
	})
	if c.rcv, err = amqp.NewReceiver(c.in, rcfg(queue)); err != nil {
		return nil, stop, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	wait := runReceiver(runCtx, c.rcv)
	stops = append(stops, func() { cancel(); _ = wait() })
	if err := pollUntil(ctx, 30*time.Second, 10*time.Millisecond, func() bool {
		q, err := br.inspect(queue)
		return err == nil && q.Consumers > 0
	}); err != nil {
		return nil, stop, fmt.Errorf("receiver did not start consuming: %w", err)
	}
	return c, stop, nil
}

// summary is the run's latency: offered rate asked for, total messages
// handled elapsed after the start.
func (c *latencyConsumer) summary(rate float64, total int, elapsed time.Duration) Latency {
	l := c.lat.summary()
	s, h := c.toStore.summary(), c.toHandler.summary()
	l.ToStoreP50Ms, l.ToStoreP99Ms, l.ToHandlerP50Ms, l.ToHandlerP99Ms = s.P50Ms, s.P99Ms, h.P50Ms, h.P99Ms
	l.OfferedRate = rate
	l.AchievedRate = float64(total) / elapsed.Seconds()
	return l
}
