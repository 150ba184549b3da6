package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/inboxkit/inbox/internal/devenv"
)

// The services, and unique names, of the repository's development
// environment (see internal/devenv).
var (
	postgresURL = devenv.PostgresURL
	amqpURL     = devenv.AMQPURL
	uniqueName  = devenv.UniqueName
)

// newPool opens a pool of maxConns connections. application_name carries
// the case's name so a stray backend is easy to attribute in pg_stat_activity.
func newPool(ctx context.Context, appName string, maxConns int32) (*pgxpool.Pool, error) {
	return newTracedPool(ctx, appName, maxConns, nil)
}

// newTracedPool is newPool with tracer (nil for none) on every connection.
func newTracedPool(ctx context.Context, appName string, maxConns int32, tracer pgx.QueryTracer) (*pgxpool.Pool, error) {
	return devenv.OpenPool(ctx, postgresURL(), appName, maxConns, func(cfg *pgxpool.Config) {
		if tracer != nil {
			cfg.ConnConfig.Tracer = tracer
		}
	})
}

// inboxSchema creates and migrates a unique inbox schema. drop removes it;
// it uses its own bounded context so it also works after ctx is done.
func inboxSchema(ctx context.Context, pool *pgxpool.Pool, prefix string) (schema string, drop func(), err error) {
	schema, dropNow, err := devenv.NewSchema(ctx, pool, uniqueName(prefix))
	if err != nil {
		return "", nil, err
	}
	return schema, func() {
		if err := dropNow(); err != nil {
			logf("warning: %v", err)
		}
	}, nil
}

func dropSchema(pool *pgxpool.Pool, schema string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
		logf("warning: drop schema %s: %v", schema, err)
	}
}

// body returns a message body of n bytes whose first 8 hold the send time
// in Unix nanoseconds (when n allows), so a handler can measure latency
// without relying on headers surviving the receiver's mapping.
func body(n int, sent time.Time) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	if n >= 8 {
		binary.BigEndian.PutUint64(b, uint64(sent.UnixNano()))
	}
	return b
}

// sentAt reads the send time that body stored.
func sentAt(b []byte) (time.Time, bool) {
	if len(b) < 8 {
		return time.Time{}, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(b))), true
}

// broker is one AMQP connection for the benchmark's own publishing and
// queue management.
type broker struct {
	conn *amqp091.Connection
}

func dialBroker() (*broker, error) {
	conn, err := amqp091.DialConfig(amqpURL(), amqp091.Config{
		Properties: amqp091.Table{"connection_name": "inbox bench"},
	})
	if err != nil {
		return nil, fmt.Errorf("connect to RabbitMQ at INBOX_AMQP_URL: %w", err)
	}
	return &broker{conn: conn}, nil
}

func (b *broker) close() { _ = b.conn.Close() }

// backlogConsumer declares a unique queue, publishes n messages to it and
// opens a consumer channel on a connection of its own with the given
// prefetch, ready for the caller to start its clock and consume. cleanup
// closes the connection and deletes the queue.
func (b *broker) backlogConsumer(ctx context.Context, prefix string, n, bodySize, prefetch int) (queue string, ch *amqp091.Channel, cleanup func(), err error) {
	queue, del, err := b.declareQueue(prefix, nil)
	if err != nil {
		return "", nil, nil, err
	}
	if err := b.publishBacklog(ctx, queue, n, bodySize, benchTopic, ""); err != nil {
		del()
		return "", nil, nil, err
	}
	conn, err := amqp091.Dial(amqpURL())
	if err != nil {
		del()
		return "", nil, nil, fmt.Errorf("connect consumer: %w", err)
	}
	cleanup = func() { _ = conn.Close(); del() }
	if ch, err = conn.Channel(); err != nil {
		cleanup()
		return "", nil, nil, fmt.Errorf("open consumer channel: %w", err)
	}
	if err := ch.Qos(prefetch, 0, false); err != nil {
		cleanup()
		return "", nil, nil, fmt.Errorf("set prefetch: %w", err)
	}
	return queue, ch, cleanup, nil
}

// nextDelivery waits for one delivery, failing if ctx ends or the broker
// closes the consumer.
func nextDelivery(ctx context.Context, deliveries <-chan amqp091.Delivery) (amqp091.Delivery, error) {
	select {
	case d, ok := <-deliveries:
		if !ok {
			return d, errors.New("broker closed the consumer's channel")
		}
		return d, nil
	case <-ctx.Done():
		return amqp091.Delivery{}, ctx.Err()
	}
}

// declareQueue declares a durable, uniquely named classic queue with args
// (nil for none). del deletes it.
func (b *broker) declareQueue(prefix string, args amqp091.Table) (name string, del func(), err error) {
	name = uniqueName(prefix)
	ch, err := b.conn.Channel()
	if err != nil {
		return "", nil, fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	if _, err := ch.QueueDeclare(name, true, false, false, false, args); err != nil {
		return "", nil, fmt.Errorf("declare queue %s: %w", name, err)
	}
	return name, func() {
		ch, err := b.conn.Channel()
		if err != nil {
			logf("warning: delete queue %s: %v", name, err)
			return
		}
		defer ch.Close()
		if _, err := ch.QueueDelete(name, false, false, false); err != nil {
			logf("warning: delete queue %s: %v", name, err)
		}
	}, nil
}

// inspect reads queue's message and consumer counts with a passive
// declare.
func (b *broker) inspect(queue string) (amqp091.Queue, error) {
	ch, err := b.conn.Channel()
	if err != nil {
		return amqp091.Queue{}, fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		return amqp091.Queue{}, fmt.Errorf("inspect queue %s: %w", queue, err)
	}
	return q, nil
}

// publishBacklog publishes n persistent messages of bodySize bytes to queue
// with publisher confirms, and returns once the broker has confirmed them
// all, so the consumer under test starts on a full queue. A non-empty
// idHeader also carries each message's ID in that header.
func (b *broker) publishBacklog(ctx context.Context, queue string, n, bodySize int, topic, idHeader string) error {
	ch, err := b.conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		return fmt.Errorf("confirm mode: %w", err)
	}
	// Confirms come back in order; keeping a window of outstanding ones
	// lets the broker batch its disk writes without unbounded memory here.
	const window = 1000
	pending := make([]*amqp091.DeferredConfirmation, 0, window)
	wait := func() error {
		for _, dc := range pending {
			ok, err := dc.WaitContext(ctx)
			if err != nil {
				return fmt.Errorf("wait for confirm: %w", err)
			}
			if !ok {
				return fmt.Errorf("broker nacked a message published to %s", queue)
			}
		}
		pending = pending[:0]
		return nil
	}
	run := uniqueName("m")
	for i := 0; i < n; i++ {
		p := amqp091.Publishing{
			DeliveryMode: amqp091.Persistent,
			MessageId:    fmt.Sprintf("%s-%d", run, i),
			Type:         topic,
			Body:         body(bodySize, time.Now()),
		}
		if idHeader != "" {
			p.Headers = amqp091.Table{idHeader: p.MessageId}
		}
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, false, false, p)
		if err != nil {
			return fmt.Errorf("publish message %d: %w", i, err)
		}
		pending = append(pending, dc)
		if len(pending) == window {
			if err := wait(); err != nil {
				return err
			}
		}
	}
	return wait()
}

// logf prints progress to stderr, keeping stdout for the results table.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// sanitize keeps a label safe for file names and identifiers.
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, strings.ToLower(s))
}

// publishPaced publishes n persistent messages to queue at rate per second,
// or as fast as it can when rate is 0. Each body carries its send time.
// Without confirms: a latency run measures the path to the handler, and
// waiting for confirms would only slow the publisher. headers, when not
// nil, gives message i its headers.
func (b *broker) publishPaced(ctx context.Context, queue string, n int, rate float64, bodySize int, headers func(i int) amqp091.Table) error {
	ch, err := b.conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	run := uniqueName("m")
	start := time.Now()
	for sent := 0; sent < n; {
		if rate > 0 {
			// Catch up with the schedule, then sleep a little: timers are
			// too coarse to wait out exactly 1/rate between messages.
			due := min(n, int(time.Since(start).Seconds()*rate)+1)
			if sent >= due {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(200 * time.Microsecond):
				}
				continue
			}
		}
		p := amqp091.Publishing{
			DeliveryMode: amqp091.Persistent,
			MessageId:    fmt.Sprintf("%s-%d", run, sent),
			Type:         benchTopic,
			Body:         body(bodySize, time.Now()),
		}
		if headers != nil {
			p.Headers = headers(sent)
		}
		err := ch.PublishWithContext(ctx, "", queue, false, false, p)
		if err != nil {
			return fmt.Errorf("publish message %d: %w", sent, err)
		}
		sent++
	}
	return nil
}
