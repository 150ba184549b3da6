package main

import (
	"context"
	"fmt"
	"path"
	"runtime/debug"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
)

// watermillUUIDHeader is where Watermill's default AMQP marshaler reads a
// message's UUID; its publisher always sets it, so the backlog carries it.
const watermillUUIDHeader = "_watermill_message_uuid"

// runWatermillIngest publishes n messages, then drains them with
// Watermill's AMQP router and a handler that does nothing (it stores
// nothing): the peer an at-least-once consumer without an inbox would be
// built on. The subscriber has the durable-queue configuration and the same
// prefetch as the receiver; Watermill handles and acks one delivery at a
// time per subscription. Timed until the handler has returned for every
// message. After the router closes, the queue must be empty but for at most
// one delivery: the subscription may see the shutdown before the last ack
// (it selects between the two), and then requeues that handled message.
func runWatermillIngest(ctx context.Context, br *broker, n, bodySize, prefetch int) (Result, error) {
	queue, del, err := br.declareQueue("bench_watermill", nil)
	if err != nil {
		return Result{}, err
	}
	defer del()
	if err := br.publishBacklog(ctx, queue, n, bodySize, benchTopic, watermillUUIDHeader); err != nil {
		return Result{}, err
	}
	cfg := wamqp.NewDurableQueueConfig(amqpURL())
	cfg.Consume.Qos.PrefetchCount = prefetch
	logger := watermill.NopLogger{}
	sub, err := wamqp.NewSubscriber(cfg, logger)
	if err != nil {
		return Result{}, fmt.Errorf("watermill subscriber: %w", err)
	}
	defer sub.Close()
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, logger)
	if err != nil {
		return Result{}, fmt.Errorf("watermill router: %w", err)
	}
	c := newCounter(n)
	// Watermill's queue configuration names the queue after the topic.
	router.AddConsumerHandler("bench", queue, sub, func(*message.Message) error {
		c.add()
		return nil
	})

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	routerErr := make(chan error, 1)
	cpu, start := startCPU(), time.Now()
	go func() { routerErr <- router.Run(runCtx) }()
	var waitErr error
	select {
	case <-c.reached:
	case err := <-routerErr:
		waitErr = fmt.Errorf("router stopped after %d of %d messages: %v", c.n.Load(), n, err)
	case <-time.After(2 * time.Minute):
		waitErr = fmt.Errorf("%d of %d messages handled after 2m", c.n.Load(), n)
	case <-ctx.Done():
		waitErr = ctx.Err()
	}
	elapsed := time.Since(start)
	cpuUse := cpu.stop(n)
	closeErr := router.Close()
	stop()
	if waitErr == nil {
		waitErr = <-routerErr
	}
	if waitErr != nil {
		return Result{}, waitErr
	}
	if closeErr != nil {
		return Result{}, fmt.Errorf("close watermill router: %w", closeErr)
	}
	if q, err := br.inspect(queue); err != nil || q.Messages > 1 {
		return Result{}, fmt.Errorf("after the watermill run %d messages are left in the queue (%v)", q.Messages, err)
	}
	return Result{
		Messages: n,
		Seconds:  elapsed.Seconds(),
		Rate:     float64(n) / elapsed.Seconds(),
		CPU:      cpuUse,
		Settings: fmt.Sprintf("%s, durable queue config, prefetch %d, no-op handler, one ack per message, pre-published queue", moduleVersions("github.com/ThreeDotsLabs/watermill", "github.com/ThreeDotsLabs/watermill-amqp/v3"), prefetch),
	}, nil
}

// moduleVersions names the given dependencies with the versions built in.
func moduleVersions(paths ...string) string {
	info, ok := debug.ReadBuildInfo()
	var out []string
	for _, p := range paths {
		v := "(unknown version)"
		if ok {
			for _, d := range info.Deps {
				if d.Path == p {
					v = d.Version
				}
			}
		}
		out = append(out, path.Base(strings.TrimSuffix(p, "/v3"))+" "+v)
	}
	return strings.Join(out, ", ")
}
