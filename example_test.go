package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
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

// A handler says what a failure means by what it returns: a plain error is
// retried with backoff, RetryAfter picks the delay, Permanent gives up at
// once. A message that is given up on is dead: kept, visible and
// replayable.
func ExamplePermanent() {
	ctx := context.Background()
	in, _, done := newExample(inbox.Config{PollInterval: 50 * time.Millisecond, Logger: quiet})
	defer done()
	ok := make(chan string)
	in.Handle("refund", func(ctx context.Context, tx pgx.Tx, msg *inbox.Message) error {
		switch {
		case len(msg.Body) == 0:
			return inbox.Permanent(errors.New("empty refund"))
		case msg.Attempt == 1:
			return inbox.RetryAfter(10*time.Millisecond, errors.New("payment service busy"))
		}
		ok <- fmt.Sprintf("%s done at attempt %d", msg.ID, msg.Attempt)
		return nil
	})
	if _, err := in.Store(ctx,
		inbox.Message{ID: "r-1", Topic: "refund", Body: []byte(`{"cents": 500}`)},
		inbox.Message{ID: "r-2", Topic: "refund"},
	); err != nil {
		fmt.Println(err)
		return
	}
	if err := in.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	defer in.Stop(ctx)
	fmt.Println(<-ok)

	dead := waitState(ctx, in, inbox.StateDead, 1)
	for _, m := range dead {
		fmt.Printf("%s is %s after %d attempt: %s\n", m.ID, m.State, m.Attempts, m.LastError)
	}
	// Output:
	// r-1 done at attempt 2
	// r-2 is dead after 1 attempt: permanent: empty refund
}

// After the cause of dead messages is fixed (a bug, a missing row), an
// operator or a program requeues them with a fresh attempt count.
func ExampleInbox_RetryDeadMessages() {
	ctx := context.Background()
	in, _, done := newExample(inbox.Config{PollInterval: 50 * time.Millisecond, Logger: quiet})
	defer done()
	fixed := make(chan struct{})
	handled := make(chan string)
	in.Handle("invoice", func(ctx context.Context, tx pgx.Tx, msg *inbox.Message) error {
		select {
		case <-fixed:
			handled <- msg.ID
			return nil
		default:
			return inbox.Permanent(errors.New("customer unknown"))
		}
	})
	if _, err := in.Store(ctx, inbox.Message{ID: "inv-1", Topic: "invoice"}); err != nil {
		fmt.Println(err)
		return
	}
	if err := in.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	defer in.Stop(ctx)
	waitState(ctx, in, inbox.StateDead, 1)

	close(fixed) // the missing customer has been imported
	n, err := in.RetryDeadMessages(ctx, inbox.MessageFilter{ErrorContains: "customer unknown"})
	fmt.Println("requeued", n, err)
	fmt.Println("handled", <-handled)
	// Output:
	// requeued 1 <nil>
	// handled inv-1
}

// A stream whose next sequence number is missing waits for it (a gap);
// Config.GapPolicy says what happens after Config.GapTimeout. An operator
// can also move it on by hand.
func ExampleInbox_SkipStream() {
	ctx := context.Background()
	in, _, done := newExample(inbox.Config{PollInterval: 50 * time.Millisecond, Logger: quiet})
	defer done()
	handled := make(chan int64)
	in.Handle("reading", func(ctx context.Context, tx pgx.Tx, msg *inbox.Message) error {
		handled <- msg.Seq
		return nil
	})
	if _, err := in.Store(ctx,
		inbox.Message{ID: "r-1", Topic: "reading", Stream: "sensor-9", Seq: 1},
		inbox.Message{ID: "r-3", Topic: "reading", Stream: "sensor-9", Seq: 3}, // 2 never comes
	); err != nil {
		fmt.Println(err)
		return
	}
	if err := in.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	defer in.Stop(ctx)
	fmt.Println("handled", <-handled)

	streams := waitStreams(ctx, in, inbox.StreamFilter{Gap: true})
	for _, s := range streams {
		fmt.Printf("%s waits for %d, has %d pending from %d\n", s.Stream, s.NextSeq, s.Pending, s.HeadSeq)
	}
	if _, err := in.SkipStream(ctx, "", "sensor-9"); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("handled", <-handled)
	// Output:
	// handled 1
	// sensor-9 waits for 2, has 1 pending from 3
	// handled 3
}

// Middleware wraps every handler, for logging, metrics or tracing.
func ExampleChain() {
	timing := func(next inbox.Handler) inbox.Handler {
		return func(ctx context.Context, tx pgx.Tx, msg *inbox.Message) error {
			start := time.Now()
			err := next(ctx, tx, msg)
			slog.DebugContext(ctx, "handled", "topic", msg.Topic, "id", msg.ID, "took", time.Since(start), "error", err)
			return err
		}
	}
	greet := func(ctx context.Context, tx pgx.Tx, msg *inbox.Message) error {
		fmt.Println("hello,", string(msg.Body))
		return nil
	}

	h := inbox.Chain(greet, timing)
	_ = h(context.Background(), nil, &inbox.Message{ID: "m-1", Topic: "greeting", Body: []byte("Ada")})
	// In a service: inbox.Config{Middleware: []inbox.Middleware{timing}},
	// or in.Handle("greeting", greet, timing).
	// Output:
	// hello, Ada
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

// TestDocCodeBlocks keeps the README and docs/testing.md honest: every Go
// code block in them must appear, line for line (indentation aside), in a
// Go file of the repository that is compiled and tested, such as this one,
// an example program or a test of the inboxtest module.
func TestDocCodeBlocks(t *testing.T) {
	docs := map[string][]string{}
	for _, name := range []string{"README.md", "docs/testing.md"} {
		md, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		docs[name] = goBlocks(string(md))
		if len(docs[name]) == 0 {
			t.Fatalf("no Go code blocks found in %s", name)
		}
	}
	var sources [][]string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") {
			return err
		}
		b, err := os.ReadFile(path)
		if err == nil {
			sources = append(sources, normalize(string(b)))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, blocks := range docs {
		for i, block := range blocks {
			want := normalize(block)
			found := false
			for _, src := range sources {
				if containsLines(src, want) {
					found = true
					break
				}
			}
			if !found {
				t.Errorf("%s: Go block %d is not in any .go file; keep it a copy of compiled code:\n%s", name, i+1, block)
			}
		}
	}
}

// goBlocks returns the bodies of the ```go fences of a Markdown text.
func goBlocks(md string) []string {
	var blocks []string
	var cur []string
	in := false
	for _, line := range strings.Split(md, "\n") {
		switch {
		case !in && strings.TrimSpace(line) == "```go":
			in, cur = true, nil
		case in && strings.TrimSpace(line) == "```":
			in = false
			blocks = append(blocks, strings.Join(cur, "\n"))
		case in:
			cur = append(cur, line)
		}
	}
	return blocks
}

// normalize drops blank lines and the indentation of each line.
func normalize(s string) []string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if line = strings.TrimSpace(line); line != "" {
			out = append(out, line)
		}
	}
	return out
}

func containsLines(src, want []string) bool {
	for i := 0; i+len(want) <= len(src); i++ {
		if slices.Equal(src[i:i+len(want)], want) {
			return true
		}
	}
	return false
}

// TestREADMEConfigTable checks that the README's configuration table names
// every Config field, and shows the default New fills in for each field
// with a plain value.
func TestREADMEConfigTable(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	section := string(readme)
	start := strings.Index(section, "\n## Configuration\n")
	if start < 0 {
		t.Fatal("README.md has no Configuration section")
	}
	section = section[start:]
	if end := strings.Index(section[1:], "\n## "); end >= 0 {
		section = section[:end+1]
	}
	row := regexp.MustCompile("(?m)^\\| `([A-Za-z]+)` \\| ([^|]+) \\|")
	documented := map[string]string{}
	for _, m := range row.FindAllStringSubmatch(section, -1) {
		documented[m[1]] = strings.TrimSpace(m[2])
	}

	pool, err := pgxpool.New(context.Background(), testenv.PostgresURL())
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	in, err := inbox.New(pool, inbox.Config{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := reflect.ValueOf(in.Config())
	for i := range cfg.NumField() {
		name := cfg.Type().Field(i).Name
		doc, ok := documented[name]
		if !ok {
			t.Errorf("README.md configuration table lacks Config.%s", name)
			continue
		}
		delete(documented, name)
		if want, ok := defaultText(cfg.Field(i).Interface()); ok && doc != want {
			t.Errorf("README.md: Config.%s defaults to %s, the table says %s", name, want, doc)
		}
	}
	for name := range documented {
		t.Errorf("README.md configuration table has %s, which Config does not", name)
	}
}

// defaultText renders a default the way the README's table writes it; ok
// is false for values it does not render (loggers, providers, slices).
func defaultText(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return "`" + x + "`", true
	case bool:
		return strconv.FormatBool(x), true
	case int:
		if x >= 1<<20 && x%(1<<20) == 0 {
			return fmt.Sprintf("%d MiB", x>>20), true
		}
		return strconv.Itoa(x), true
	case *int64:
		return strconv.FormatInt(*x, 10), true
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64), true
	case inbox.GapPolicy:
		s := x.String()
		return "`Gap" + strings.ToUpper(s[:1]) + s[1:] + "`", true
	case time.Duration:
		for _, u := range []struct {
			d      time.Duration
			suffix string
		}{{time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}} {
			if x%u.d == 0 {
				return fmt.Sprintf("%d%s", x/u.d, u.suffix), true
			}
		}
		return x.String(), true
	}
	return "", false
}
