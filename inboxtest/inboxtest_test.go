package inboxtest_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/amqp"
	"github.com/inboxkit/inbox/inboxtest"
)

// These tests use INBOX_POSTGRES_URL and INBOX_AMQP_URL when set (the
// Makefile sets them to the local services), else containers.
func TestMain(m *testing.M) { inboxtest.Main(m) }

// OrderPaid and markPaid stand for a service's own code in the test that
// docs/testing.md shows.
type OrderPaid struct {
	OrderID string `json:"order_id"`
}

func markPaid(ctx context.Context, tx pgx.Tx, msg *inbox.Message, p OrderPaid) error {
	tag, err := tx.Exec(ctx, `UPDATE orders SET status = 'paid' WHERE id = $1 AND status = 'created'`, p.OrderID)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return inbox.Permanent(fmt.Errorf("order %s is not awaiting payment", p.OrderID))
	}
	return nil
}

// TestPaidOrderIsMarked is the test of docs/testing.md, kept compiling and
// passing here.
func TestPaidOrderIsMarked(t *testing.T) {
	t.Parallel()
	env := inboxtest.Setup(t) // a fresh, migrated schema; dropped at the end
	ctx := context.Background()
	if _, err := env.Pool.Exec(ctx, `CREATE TABLE orders (id text PRIMARY KEY, status text)`); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Pool.Exec(ctx, `INSERT INTO orders VALUES ('o-1', 'created')`); err != nil {
		t.Fatal(err)
	}
	in := env.NewInbox(inbox.Config{})
	in.Handle("order.paid", inbox.JSON(markPaid)) // the service's own handler
	inboxtest.Start(t, in)                        // stopped at the end

	_, err := in.Store(ctx, inbox.Message{ID: "m-1", Topic: "order.paid", Body: []byte(`{"order_id": "o-1"}`)})
	if err != nil {
		t.Fatal(err)
	}
	env.WaitHandled(1, 10*time.Second)
	var status string
	if err := env.Pool.QueryRow(ctx, `SELECT status FROM orders WHERE id = 'o-1'`).Scan(&status); err != nil {
		t.Fatal(err)
	}
	if status != "paid" {
		t.Fatalf("status %q, want paid", status)
	}
	if c := env.Counts(); c != (inboxtest.Counts{Done: 1}) {
		t.Fatalf("counts: %v", c)
	}
}

// schemaExists reports whether schema is in the database, through a
// connection of its own.
func schemaExists(t *testing.T, schema string) bool {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, inboxtest.Postgres(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, schema).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

func TestSetupIsolatesAndCleansUp(t *testing.T) {
	t.Parallel()
	var schemas []string
	// Two "tests" side by side, each creating the same unqualified table.
	for i := range 2 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			env := inboxtest.Setup(t)
			schemas = append(schemas, env.Schema)
			ctx := context.Background()
			if _, err := env.Pool.Exec(ctx, `CREATE TABLE orders (id text PRIMARY KEY)`); err != nil {
				t.Fatal(err)
			}
			var where string
			if err := env.Pool.QueryRow(ctx, `SELECT table_schema FROM information_schema.tables WHERE table_name = 'orders' AND table_schema = current_schema()`).Scan(&where); err != nil {
				t.Fatal(err)
			}
			if where != env.Schema {
				t.Fatalf("orders created in %q, want the test's schema %q", where, env.Schema)
			}
			if c := env.Counts(); c.Total() != 0 {
				t.Fatalf("fresh schema has messages: %v", c)
			}
		})
	}
	if len(schemas) != 2 || schemas[0] == schemas[1] {
		t.Fatalf("schemas %v: want two different ones", schemas)
	}
	for _, s := range schemas {
		if schemaExists(t, s) {
			t.Errorf("schema %s still exists after its test ended", s)
		}
	}
}

func TestNewSchemaDroppedAfterPoolClosed(t *testing.T) {
	t.Parallel()
	var schema string
	t.Run("inner", func(t *testing.T) {
		pool, err := pgxpool.New(context.Background(), inboxtest.Postgres(t))
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close() // runs before the cleanups
		schema = inboxtest.NewSchema(t, pool)
		in, err := inbox.New(pool, inbox.Config{Schema: schema})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := in.Store(context.Background(), inbox.Message{ID: "a", Topic: "t"}); err != nil {
			t.Fatalf("the new schema is not migrated: %v", err)
		}
	})
	if schema == "" || schemaExists(t, schema) {
		t.Fatalf("schema %q was not dropped", schema)
	}
}

// recorder is a testing.TB that records a fatal failure instead of
// failing the real test. Fatal stops the calling goroutine, as in testing.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	failed string
}

func (r *recorder) Fatalf(format string, args ...any) {
	r.mu.Lock()
	r.failed = fmt.Sprintf(format, args...)
	r.mu.Unlock()
	runtime.Goexit()
}

func (r *recorder) Helper() {}

// fails runs fn with a recorder and returns its fatal message, or "".
func fails(t *testing.T, fn func(tb testing.TB)) string {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(r)
	}()
	<-done
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

func TestWaitHandledReportsDeadAndTimeout(t *testing.T) {
	t.Parallel()
	env := inboxtest.Setup(t)
	ctx := context.Background()
	in := env.NewInbox(inbox.Config{})
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		if m.ID == "bad" {
			return inbox.Permanent(errors.New("no such customer"))
		}
		return nil
	})
	inboxtest.Start(t, in)
	if _, err := in.Store(ctx, inbox.Message{ID: "good", Topic: "t"}, inbox.Message{ID: "bad", Topic: "t"}); err != nil {
		t.Fatal(err)
	}
	msg := fails(t, func(tb testing.TB) { inboxtest.WaitHandled(tb, env.Pool, env.Schema, 2, 10*time.Second) })
	if !strings.Contains(msg, "went dead") || !strings.Contains(msg, `"bad"`) || !strings.Contains(msg, "no such customer") {
		t.Fatalf("WaitHandled with a dead message failed with %q", msg)
	}
	inboxtest.WaitFor(t, env.Pool, env.Schema, 10*time.Second, func(c inboxtest.Counts) bool { return c.Done == 1 && c.Dead == 1 })

	msg = fails(t, func(tb testing.TB) {
		inboxtest.WaitFor(tb, env.Pool, env.Schema, 100*time.Millisecond, func(c inboxtest.Counts) bool { return c.Done == 5 })
	})
	if !strings.Contains(msg, "timed out") || !strings.Contains(msg, "1 done, 1 dead") {
		t.Fatalf("WaitFor that cannot succeed failed with %q", msg)
	}
}

// TestWaitHandledSkipsDuplicates: a message the worker marks done as a
// duplicate (its sequence was already applied) was not handled, so it must
// not count towards WaitHandled.
func TestWaitHandledSkipsDuplicates(t *testing.T) {
	t.Parallel()
	env := inboxtest.Setup(t)
	ctx := context.Background()
	in := env.NewInbox(inbox.Config{})
	var mu sync.Mutex
	var handled []string
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		mu.Lock()
		defer mu.Unlock()
		handled = append(handled, m.ID)
		return nil
	})
	// Two IDs with the same position in one stream: both are stored, one
	// is handled and the other marked done as a duplicate.
	if _, err := in.Store(ctx, inbox.Message{ID: "a", Topic: "t", Stream: "s", Seq: 1}, inbox.Message{ID: "b", Topic: "t", Stream: "s", Seq: 1}); err != nil {
		t.Fatal(err)
	}
	inboxtest.Start(t, in)
	inboxtest.WaitFor(t, env.Pool, env.Schema, 10*time.Second, func(c inboxtest.Counts) bool { return c.Done == 2 })
	if c := env.Counts(); c.Duplicates != 1 || c.Handled() != 1 {
		t.Fatalf("counts %+v: want 1 handled and 1 duplicate", c)
	}
	msg := fails(t, func(tb testing.TB) { inboxtest.WaitHandled(tb, env.Pool, env.Schema, 2, 300*time.Millisecond) })
	if !strings.Contains(msg, "timed out") {
		t.Fatalf("WaitHandled(2) with one handled and one duplicate: %q; want a timeout", msg)
	}
	env.WaitHandled(1, 10*time.Second)
	mu.Lock()
	defer mu.Unlock()
	if len(handled) != 1 {
		t.Fatalf("handled %v", handled)
	}
}

func TestUniqueName(t *testing.T) {
	t.Parallel()
	ident := regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)
	a, b := inboxtest.UniqueName("My_Prefix"), inboxtest.UniqueName("My_Prefix")
	if a == b || !ident.MatchString(a) || !strings.HasPrefix(a, "my_prefix_") || len(a) > 63 {
		t.Fatalf("UniqueName gave %q and %q", a, b)
	}
}

func TestPublishToMissingQueueFails(t *testing.T) {
	t.Parallel()
	url := inboxtest.RabbitMQ(t)
	msg := fails(t, func(tb testing.TB) {
		inboxtest.Publish(tb, url, inboxtest.UniqueName("nowhere"), inbox.Message{ID: "m", Topic: "t"})
	})
	if !strings.Contains(msg, "not routed") {
		t.Fatalf("publishing to a missing queue failed with %q", msg)
	}
}

func TestPublishThroughTheReceiver(t *testing.T) {
	t.Parallel()
	env := inboxtest.Setup(t)
	var mu sync.Mutex
	var got []string
	handle := func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, fmt.Sprintf("%s/%s#%d %s %s", m.Source, m.Stream, m.Seq, m.Body, m.Headers["traceparent"]))
		return nil
	}
	tp := map[string]string{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}

	url := inboxtest.RabbitMQ(t)
	queue := inboxtest.NewQueue(t, url) // with queue+".dead" for rejects; all deleted at the end
	in := env.NewInbox(inbox.Config{})
	in.Handle("order.event", handle)
	inboxtest.Start(t, in)
	rcv := inboxtest.StartReceiver(t, in, amqp.Config{URL: url, Queue: queue}) // stopped at the end

	inboxtest.Publish(t, url, queue,
		inbox.Message{ID: "e-2", Topic: "order.event", Stream: "o-1", Seq: 2, Body: []byte("paid")},
		inbox.Message{ID: "e-1", Topic: "order.event", Stream: "o-1", Seq: 1, Body: []byte("created"), Headers: tp},
		inbox.Message{ID: "e-1", Topic: "order.event", Stream: "o-1", Seq: 1, Body: []byte("created"), Headers: tp}, // a duplicate
	)
	inboxtest.PublishRaw(t, url, queue, amqp091.Publishing{Type: "order.event", Body: []byte("no message id")})
	env.WaitHandled(2, 10*time.Second)

	inboxtest.WaitFor(t, env.Pool, env.Schema, 10*time.Second, func(inboxtest.Counts) bool {
		st := rcv.Stats()
		return st.Acked == 3 && st.RejectedTotal() == 1
	})
	mu.Lock()
	defer mu.Unlock()
	want := []string{
		queue + "/o-1#1 created " + tp["traceparent"],
		queue + "/o-1#2 paid ",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("handled %q, want %q", got, want)
	}
	if st := rcv.Stats(); st.Stored != 2 || st.Duplicates != 1 || st.Rejected[inbox.ReasonMissingID] != 1 {
		t.Fatalf("receiver stats %+v", st)
	}
	if n := inboxtest.QueueLen(t, url, queue+amqp.DefaultDeadLetterQueueSuffix); n != 1 {
		t.Fatalf("dead-letter queue has %d messages, want the one without an ID", n)
	}
}
