package amqp_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/amqp"
	"github.com/inboxkit/inbox/internal/sqlident"
	"github.com/inboxkit/inbox/internal/testenv"
)

const topic = "order.created"

// env is one test's world: a migrated schema with an effects table, a queue
// with a dead-letter queue, and a publisher. Everything is unique to the test
// and removed when it ends, so tests run in parallel and repeatedly.
type env struct {
	t      *testing.T
	ctx    context.Context
	url    string
	pool   *pgxpool.Pool // the workers' pool
	schema string
	q      string // quoted schema
	queue  string
	dlq    string
	pub    *amqp091.Channel
	logs   *logBuffer
	calls  *counter
}

func setup(t *testing.T) *env {
	t.Helper()
	t.Parallel()
	pool, schema := testenv.Schema(t, 20)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	e := &env{
		t:      t,
		ctx:    ctx,
		url:    testenv.AMQPURL(),
		pool:   pool,
		schema: schema,
		q:      sqlident.Quote(schema),
		queue:  testenv.UniqueName("inbox_test"),
		logs:   &logBuffer{},
		calls:  &counter{},
	}
	e.dlq = e.queue + amqp.DefaultDeadLetterQueueSuffix
	t.Cleanup(func() {
		if t.Failed() {
			logs := e.logs.String()
			t.Logf("logs (last 8000 bytes):\n%s", logs[max(0, len(logs)-800000):])
		}
	})
	e.exec(`CREATE TABLE ` + e.q + `.effects (message_id text PRIMARY KEY, stream text, seq bigint, applied bigserial)`)
	if err := amqp.Declare(ctx, e.url, amqp.Topology{Queue: e.queue}); err != nil {
		t.Fatalf("declare topology: %v", err)
	}
	conn, err := amqp091.DialConfig(e.url, amqp091.Config{Properties: amqp091.Table{"connection_name": e.queue + " test publisher"}})
	if err != nil {
		t.Fatalf("RabbitMQ at INBOX_AMQP_URL does not answer: %v", err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		deleteTopology(t, e.url, []string{e.queue, e.dlq}, []string{e.queue + amqp.DefaultDeadLetterExchangeSuffix})
	})
	e.pub, err = conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.pub.Confirm(false); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.pool.Exec(e.ctx, sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

func (e *env) count(sql string, args ...any) int {
	e.t.Helper()
	var n int
	if err := e.pool.QueryRow(e.ctx, sql, args...).Scan(&n); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func (e *env) rows() int { return e.count(`SELECT count(*) FROM ` + e.q + `.inbox_messages`) }

func (e *env) effects() int { return e.count(`SELECT count(*) FROM ` + e.q + `.effects`) }

// publish sends msgs to the queue through the default exchange and waits
// for the broker to confirm them all.
func (e *env) publish(msgs ...amqp091.Publishing) {
	e.t.Helper()
	confirms := make([]*amqp091.DeferredConfirmation, 0, len(msgs))
	for _, m := range msgs {
		if m.Type == "" {
			m.Type = topic
		}
		c, err := e.pub.PublishWithDeferredConfirmWithContext(e.ctx, "", e.queue, false, false, m)
		if err != nil {
			e.t.Fatalf("publish: %v", err)
		}
		confirms = append(confirms, c)
	}
	for _, c := range confirms {
		ok, err := c.WaitContext(e.ctx)
		if err != nil || !ok {
			e.t.Fatalf("publish not confirmed: %v", err)
		}
	}
}

// orders returns n publishings with IDs prefix-0 .. prefix-(n-1).
func orders(prefix string, n int) []amqp091.Publishing {
	out := make([]amqp091.Publishing, n)
	for i := range out {
		out[i] = amqp091.Publishing{
			MessageId:    fmt.Sprintf("%s-%d", prefix, i),
			DeliveryMode: amqp091.Persistent,
			Body:         []byte(`{"n":` + strconv.Itoa(i) + `}`),
		}
	}
	return out
}

// newInbox returns an Inbox with the effect handler registered, started and
// stopped at test end, on the workers' pool.
func (e *env) newInbox(cfg inbox.Config) *inbox.Inbox {
	e.t.Helper()
	in := e.storeOnly(e.pool, cfg)
	in.Handle(topic, e.effect)
	if err := in.Start(e.ctx); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = in.Stop(ctx)
	})
	return in
}

// storeOnly returns an Inbox on pool that is never started: a receiver's
// store, on a pool of its own so a test can cut the receiver's database
// connections without touching the workers'.
func (e *env) storeOnly(pool *pgxpool.Pool, cfg inbox.Config) *inbox.Inbox {
	e.t.Helper()
	cfg.Schema = e.schema
	cfg.Logger = slog.New(slog.NewTextHandler(e.logs, nil))
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 50 * time.Millisecond
	}
	if cfg.Workers == 0 {
		cfg.Workers = 8
	}
	in, err := inbox.New(pool, cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return in
}

// effect writes one row per message in the handler's transaction: the
// primary key turns a double effect into a failure.
func (e *env) effect(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
	e.calls.add(m.ID)
	var stream any
	if m.Stream != "" {
		stream = m.Stream
	}
	_, err := tx.Exec(ctx, `INSERT INTO `+e.q+`.effects (message_id, stream, seq) VALUES ($1, $2, $3)`, m.ID, stream, m.Seq)
	return err
}

// receiverConfig is a Config with test-friendly timings.
func (e *env) receiverConfig() amqp.Config {
	return amqp.Config{
		URL:               e.url,
		Queue:             e.queue,
		ConnectionName:    e.queue + " receiver",
		ReconnectInitial:  50 * time.Millisecond,
		ReconnectMax:      500 * time.Millisecond,
		StoreRetryInitial: 20 * time.Millisecond,
		StoreRetryMax:     200 * time.Millisecond,
		Logger:            slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// running is a Receiver whose Run goroutine the test can stop and wait for.
type running struct {
	*amqp.Receiver
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

func (e *env) run(store amqp.Store, cfg amqp.Config) *running {
	e.t.Helper()
	rcv, err := amqp.NewReceiver(store, cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	r := &running{Receiver: rcv, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- rcv.Run(ctx) }()
	e.t.Cleanup(func() { _ = r.stop() })
	return r
}

// stop cancels Run and waits for it to return.
func (r *running) stop() error {
	r.once.Do(func() {
		r.cancel()
		select {
		case r.err = <-r.done:
		case <-time.After(30 * time.Second):
			r.err = errors.New("Run did not return within 30s of cancel")
		}
	})
	return r.err
}

// waitFor polls cond until it holds or the deadline passes.
func (e *env) waitFor(what string, timeout time.Duration, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// deleteTopology removes a test's queues and exchanges, on a connection of
// its own: the test may have broken its others.
func deleteTopology(t *testing.T, url string, queues, exchanges []string) {
	conn, err := amqp091.Dial(url)
	if err != nil {
		t.Logf("delete queues %v: %v", queues, err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Logf("delete queues %v: %v", queues, err)
		return
	}
	for _, q := range queues {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			t.Logf("delete queue %s: %v", q, err)
			return // the error closed the channel
		}
	}
	for _, x := range exchanges {
		if err := ch.ExchangeDelete(x, false, false); err != nil {
			t.Logf("delete exchange %s: %v", x, err)
			return
		}
	}
}

// queueDepth returns the messages in queue that no consumer holds. With no
// consumer connected, that is every message: ready and formerly unacked.
func (e *env) queueDepth(queue string) int {
	e.t.Helper()
	q, err := inspect(e.url, queue)
	if err != nil {
		e.t.Fatal(err)
	}
	return q.Messages
}

// inspect declares queue passively on a connection of its own: on a missing
// queue the broker closes the channel.
func inspect(url, queue string) (amqp091.Queue, error) {
	conn, err := amqp091.Dial(url)
	if err != nil {
		return amqp091.Queue{}, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return amqp091.Queue{}, err
	}
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		return amqp091.Queue{}, fmt.Errorf("inspect queue %s: %w", queue, err)
	}
	return q, nil
}

// assertDrained checks, after the receiver stopped, that the queue is empty:
// anything left unacked would be back in it.
func (e *env) assertDrained() {
	e.t.Helper()
	if n := e.depthAfterStop(); n != 0 {
		e.t.Fatalf("queue %s holds %d messages after the receiver stopped; want 0", e.queue, n)
	}
}

// depthAfterStop waits until the broker has removed the stopped receiver's
// consumer, and returns the queue's depth in that same reading: the broker
// requeues a consumer's unacked deliveries as it removes it, so the depth
// then includes them.
func (e *env) depthAfterStop() int {
	e.t.Helper()
	var q amqp091.Queue
	e.waitFor("the receiver's consumer gone", 10*time.Second, func() bool {
		var err error
		if q, err = inspect(e.url, e.queue); err != nil {
			e.t.Fatal(err)
		}
		return q.Consumers == 0
	})
	return q.Messages
}

// assertOnceEach checks that every one of n messages was handled exactly
// once: n rows, all done, n effects, one handler call each.
func (e *env) assertOnceEach(n int) {
	e.t.Helper()
	e.waitFor(fmt.Sprintf("%d effects", n), 60*time.Second, func() bool { return e.effects() >= n })
	if got := e.rows(); got != n {
		e.t.Fatalf("%d inbox rows, want %d", got, n)
	}
	if got := e.effects(); got != n {
		e.t.Fatalf("%d effects, want %d", got, n)
	}
	e.waitFor("all rows done", 10*time.Second, func() bool {
		return e.count(`SELECT count(*) FROM `+e.q+`.inbox_messages WHERE state = 'done'`) == n
	})
	if many := e.calls.over(1); len(many) > 0 {
		e.t.Fatalf("%d messages were handled more than once, e.g. %v", len(many), many[:min(5, len(many))])
	}
}

// rabbitmqctl runs the broker's CLI, or skips when it is not here (for
// example with a remote INBOX_AMQP_URL).
func rabbitmqctl(t *testing.T, args ...string) string {
	t.Helper()
	path, err := exec.LookPath("rabbitmqctl")
	if err != nil {
		t.Skip("rabbitmqctl not available: ", err)
	}
	out, err := exec.Command(path, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("rabbitmqctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// closeConnections closes, broker side, the connections whose
// connection_name is name, as `rabbitmqctl close_all_connections` would but
// without disturbing tests that run in parallel. It returns how many it
// closed.
func closeConnections(t *testing.T, name string) int {
	t.Helper()
	out := rabbitmqctl(t, "list_connections", "pid", "client_properties", "-s")
	closed := 0
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, `{"connection_name","`+name+`"}`) {
			continue
		}
		pid := strings.Fields(line)[0]
		rabbitmqctl(t, "close_connection", pid, "forced by test")
		closed++
	}
	return closed
}

// unacked returns the queue's unacknowledged message count.
func unacked(t *testing.T, queue string) int {
	t.Helper()
	out := rabbitmqctl(t, "list_queues", "name", "messages_unacknowledged", "-s")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == queue {
			n, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatalf("rabbitmqctl list_queues: %q", line)
			}
			return n
		}
	}
	t.Fatalf("queue %s not listed by rabbitmqctl", queue)
	return 0
}

// counter counts handler calls per message ID.
type counter struct {
	mu    sync.Mutex
	calls map[string]int
}

func (c *counter) add(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.calls == nil {
		c.calls = map[string]int{}
	}
	c.calls[id]++
}

func (c *counter) over(n int) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for id, k := range c.calls {
		if k > n {
			out = append(out, id)
		}
	}
	return out
}

// logBuffer collects a test's logs.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
