package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/internal/sqlident"
	"github.com/inboxkit/inbox/internal/testenv"
	"github.com/inboxkit/inbox/migrations"
)

// The examples run against the database of INBOX_POSTGRES_URL (or the local
// default), each in a schema of its own that exampleDB creates and
// dropSchema drops. In a service the schema is a fixed name such as
// "inbox", migrated once at deploy time.

// exampleDB returns a pool on the test database and a fresh schema name,
// first on the pool's search_path so the examples' own tables (orders) go
// there too.
func exampleDB() (*pgxpool.Pool, string) {
	schema := testenv.UniqueName("example")
	cfg, err := pgxpool.ParseConfig(testenv.PostgresURL())
	if err != nil {
		panic(err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		panic(err)
	}
	return pool, schema
}

// newExample migrates a fresh schema and returns an Inbox on it with cfg
// (Schema set), its pool, and done, which drops the schema. Example shows
// these steps as a service takes them.
func newExample(cfg inbox.Config) (in *inbox.Inbox, pool *pgxpool.Pool, done func()) {
	pool, cfg.Schema = exampleDB()
	done = func() { dropSchema(pool, cfg.Schema) }
	if _, err := migrations.Up(context.Background(), pool, cfg.Schema); err != nil {
		done()
		panic(err)
	}
	in, err := inbox.New(pool, cfg)
	if err != nil {
		done()
		panic(err)
	}
	return in, pool, done
}

// dropSchema removes an example's schema and closes its pool.
func dropSchema(pool *pgxpool.Pool, schema string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+sqlident.Quote(schema)+" CASCADE"); err != nil {
		fmt.Fprintln(os.Stderr, "drop example schema:", err)
	}
	pool.Close()
}

// quiet keeps the examples' output to what they print; a service keeps the
// default logger, or passes its own.
var quiet = slog.New(slog.DiscardHandler)

// The whole cycle: migrate, register a handler, store messages (one of them
// twice), start the workers and watch each message handled once.
func Example() {
	ctx := context.Background()
	pool, schema := exampleDB()
	defer dropSchema(pool, schema)

	// Once, at deploy time (or with: inboxctl migrate up).
	if _, err := migrations.Up(ctx, pool, schema); err != nil {
		fmt.Println("migrate:", err)
		return
	}

	in, err := inbox.New(pool, inbox.Config{Schema: schema, Workers: 1, Logger: quiet})
	if err != nil {
		fmt.Println(err)
		return
	}
	handled := make(chan string)
	in.Handle("greeting", func(ctx context.Context, tx pgx.Tx, msg *inbox.Message) error {
		handled <- fmt.Sprintf("%s: %s", msg.ID, msg.Body)
		return nil
	})

	// A receiver (package amqp) calls Store for what comes from RabbitMQ;
	// any code may call it.
	res, err := in.Store(ctx,
		inbox.Message{ID: "m-1", Topic: "greeting", Body: []byte("hello")},
		inbox.Message{ID: "m-2", Topic: "greeting", Body: []byte("world")},
		inbox.Message{ID: "m-1", Topic: "greeting", Body: []byte("hello")}, // delivered twice
	)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("stored %d, dropped %d duplicate\n", res.Stored, res.Duplicates)

	if err := in.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	defer in.Stop(ctx)
	seen := map[string]bool{}
	for range 2 {
		seen[<-handled] = true
	}
	fmt.Println(seen["m-1: hello"], seen["m-2: world"])
	// Output:
	// stored 2, dropped 1 duplicate
	// true true
}

// OrderPaid is the body of an "order.paid" message.
type OrderPaid struct {
	OrderID     string `json:"order_id"`
	AmountCents int64  `json:"amount_cents"`
}

// markPaid applies an "order.paid" message. Its UPDATE commits together
// with the mark that the message is done, so a redelivered copy cannot apply
// it twice.
func markPaid(ctx context.Context, tx pgx.Tx, msg *inbox.Message, p OrderPaid) error {
	tag, err := tx.Exec(ctx, `UPDATE orders SET status = 'paid', paid_cents = $2
		WHERE id = $1 AND status = 'created'`, p.OrderID, p.AmountCents)
	if err != nil {
		return err // rolled back, and tried again after a backoff
	}
	if tag.RowsAffected() == 0 {
		return inbox.Permanent(fmt.Errorf("order %s is not awaiting payment", p.OrderID))
	}
	return nil
}

// A typed handler that writes its effect through the inbox's transaction.
func ExampleJSON() {
	ctx := context.Background()
	in, pool, done := newExample(inbox.Config{PollInterval: 50 * time.Millisecond, Logger: quiet})
	defer done()
	if _, err := pool.Exec(ctx, `CREATE TABLE orders (id text PRIMARY KEY, status text NOT NULL, paid_cents bigint NOT NULL DEFAULT 0);
		INSERT INTO orders (id, status) VALUES ('o-1', 'created')`); err != nil {
		fmt.Println(err)
		return
	}
	in.Handle("order.paid", inbox.JSON(markPaid))

	if _, err := in.Store(ctx,
		inbox.Message{ID: "pay-o-1", Topic: "order.paid", Body: []byte(`{"order_id": "o-1", "amount_cents": 4200}`)},
		inbox.Message{ID: "pay-o-2", Topic: "order.paid", Body: []byte(`{"order_id": "o-2", "amount_cents": 100}`)},
		inbox.Message{ID: "pay-o-3", Topic: "order.paid", Body: []byte(`not json`)},
	); err != nil {
		fmt.Println(err)
		return
	}
	if err := in.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	defer in.Stop(ctx)
	waitState(ctx, in, inbox.StateDone, 1)
	for _, m := range waitState(ctx, in, inbox.StateDead, 2) {
		fmt.Printf("%s dead: %s\n", m.ID, m.LastError)
	}
	var status string
	var paid int64
	if err := pool.QueryRow(ctx, `SELECT status, paid_cents FROM orders WHERE id = 'o-1'`).Scan(&status, &paid); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("o-1", status, paid)
	// Output:
	// pay-o-2 dead: permanent: order o-2 is not awaiting payment
	// pay-o-3 dead: permanent: decode order.paid body as inbox_test.OrderPaid: invalid character 'o' in literal null (expecting 'u')
	// o-1 paid 4200
}

// Store reports which messages were new. A message is a duplicate when its
// (Source, ID) is already stored, within the batch or before it.
func ExampleInbox_Store() {
	ctx := context.Background()
	in, _, done := newExample(inbox.Config{})
	defer done()

	res, err := in.Store(ctx, inbox.Message{ID: "a", Topic: "t"}, inbox.Message{ID: "b", Topic: "t"})
	fmt.Println(res.New, res.Stored, res.Duplicates, err)
	res, err = in.Store(ctx, inbox.Message{ID: "b", Topic: "t"}, inbox.Message{ID: "c", Topic: "t"})
	fmt.Println(res.New, res.Stored, res.Duplicates, err)

	// The same ID from another source is another message.
	res, err = in.Store(ctx, inbox.Message{ID: "a", Source: "billing", Topic: "t"})
	fmt.Println(res.New, err)

	// Bad input is refused as a whole batch, with the reason.
	_, err = in.Store(ctx, inbox.Message{Topic: "t"})
	var invalid *inbox.InvalidMessageError
	fmt.Println(errors.As(err, &invalid), invalid.Reason)
	// Output:
	// [true true] 2 0 <nil>
	// [false true] 1 1 <nil>
	// [true] <nil>
	// true missing message id
}

// StoreTx stores messages in the caller's transaction: they exist, and are
// handled, only if the caller commits.
func ExampleInbox_StoreTx() {
	ctx := context.Background()
	in, pool, done := newExample(inbox.Config{})
	defer done()

	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		// ... the caller's own writes ...
		_, err := in.StoreTx(ctx, tx, inbox.Message{ID: "m-1", Topic: "report.requested"})
		return err
	})
	fmt.Println("committed:", err)

	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := in.StoreTx(ctx, tx, inbox.Message{ID: "m-2", Topic: "report.requested"}); err != nil {
			return err
		}
		return errors.New("validation failed") // rolls back, m-2 included
	})
	fmt.Println("rolled back:", err)

	msgs, err := in.ListMessages(ctx, inbox.MessageFilter{})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, m := range msgs {
		fmt.Println(m.ID, m.State)
	}
	// Output:
	// committed: <nil>
	// rolled back: validation failed
	// m-1 pending
}

// Messages of one stream are handled in sequence order, whatever order they
// arrive in. Here the stream is an order ID and the sequence its event
// number.
func ExampleMessage_stream() {
	ctx := context.Background()
	in, _, done := newExample(inbox.Config{Workers: 4, Logger: quiet})
	defer done()
	handled := make(chan string, 3)
	in.Handle("order.event", func(ctx context.Context, tx pgx.Tx, msg *inbox.Message) error {
		handled <- fmt.Sprintf("%s #%d %s", msg.Stream, msg.Seq, msg.Body)
		return nil
	})
	if err := in.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	defer in.Stop(ctx)

	// Shipped arrives first; it waits for created and paid.
	for _, m := range []inbox.Message{
		{ID: "e-3", Topic: "order.event", Stream: "order-7", Seq: 3, Body: []byte("shipped")},
		{ID: "e-1", Topic: "order.event", Stream: "order-7", Seq: 1, Body: []byte("created")},
		{ID: "e-2", Topic: "order.event", Stream: "order-7", Seq: 2, Body: []byte("paid")},
	} {
		if _, err := in.Store(ctx, m); err != nil {
			fmt.Println(err)
			return
		}
	}
	for range 3 {
		fmt.Println(<-handled)
	}
	// Output:
	// order-7 #1 created
	// order-7 #2 paid
	// order-7 #3 shipped
}

// waitState polls until n messages are in state and returns them.
func waitState(ctx context.Context, in *inbox.Inbox, state inbox.State, n int) []inbox.MessageInfo {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		msgs, err := in.ListMessages(ctx, inbox.MessageFilter{State: state})
		if err == nil && len(msgs) >= n {
			return msgs
		}
	}
	return nil
}

// waitStreams polls until a stream matches f and returns the matches.
func waitStreams(ctx context.Context, in *inbox.Inbox, f inbox.StreamFilter) []inbox.StreamInfo {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		streams, err := in.ListStreams(ctx, f)
		if err == nil && len(streams) > 0 {
			return streams
		}
	}
	return nil
}
