package inbox_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/internal/sqlident"
	"github.com/inboxkit/inbox/internal/testenv"
)

// A statement that looks rows up by key in a table that grows must not
// keep a plan made while the table was small. PostgreSQL caches a prepared
// statement's generic plan after five runs; made on a new, near-empty
// table, it scans the whole table instead of probing the key's index,
// and with statistics that no ANALYZE has refreshed (autovacuum off, or
// not yet come round) it keeps doing so as the table grows: each Enqueue
// or Store then costs the whole table.

// checkKeyLookupAsTableGrows runs op on one connection often enough for a
// generic plan to be cached while table is near empty, grows table with
// grow (autovacuum off for it, so no ANALYZE replans), runs op three more
// times and fails if any of them scanned table instead of using an index.
func (b *bundle) checkKeyLookupAsTableGrows(table, grow string, op func(tx pgx.Tx, i int) error) {
	b.t.Helper()
	b.exec(`ALTER TABLE ` + b.q + `.` + table + ` SET (autovacuum_enabled = false)`)
	conn, err := b.pool.Acquire(b.ctx)
	if err != nil {
		b.t.Fatal(err)
	}
	defer conn.Release()
	run := func(i int) {
		b.t.Helper()
		tx, err := conn.Begin(b.ctx)
		if err != nil {
			b.t.Fatal(err)
		}
		defer func() { _ = tx.Rollback(b.ctx) }()
		if err := op(tx, i); err != nil {
			b.t.Fatalf("run %d: %v", i, err)
		}
		if err := tx.Commit(b.ctx); err != nil {
			b.t.Fatal(err)
		}
	}
	// seqScans reads how often table was scanned whole, after making the
	// connection report its counts (which a backend does when it goes
	// idle, at most once a second unless asked).
	seqScans := func() int64 {
		b.t.Helper()
		if _, err := conn.Exec(b.ctx, `SELECT pg_stat_force_next_flush()`); err != nil {
			b.t.Fatal(err)
		}
		return int64(b.count(`SELECT seq_scan FROM pg_stat_user_tables WHERE relid = $1::regclass`, b.q+"."+table))
	}
	for i := range 8 {
		run(i)
	}
	b.exec(grow)
	before := seqScans()
	for i := 8; i < 11; i++ {
		run(i)
	}
	if n := seqScans() - before; n != 0 {
		b.t.Errorf("after %s grew, 3 runs scanned the whole table %d time(s): the statement kept a plan made while the table was small", table, n)
	}
}

// setupAlone is setup in a database of its own: other tests' new schemas
// would make the connection replan, hiding a plan that stuck.
func setupAlone(t *testing.T) *bundle {
	t.Helper()
	t.Parallel()
	pool, schema := testenv.Database(t, 4)
	return &bundle{t: t, ctx: t.Context(), pool: pool, schema: schema, q: sqlident.Quote(schema)}
}

func TestOutboxEnqueueProbesTheIDIndexAsTheTableGrows(t *testing.T) {
	b := setupAlone(t)
	ob := b.newOutbox(inbox.OutboxConfig{})
	b.checkKeyLookupAsTableGrows("outbox_messages", `
INSERT INTO `+b.q+`.outbox_messages (message_id, routing_key, state, body)
SELECT 'grown-' || g, 'q', 'sent', convert_to(repeat('x', 200), 'UTF8') FROM generate_series(1, 20000) g`,
		func(tx pgx.Tx, i int) error {
			_, err := ob.Enqueue(b.ctx, tx, inbox.OutgoingMessage{ID: fmt.Sprintf("m-%d", i), RoutingKey: "q", Body: []byte("x")})
			return err
		})
}

// checkGenericPlans runs op calls times on one connection, each in a
// transaction of its own, and fails unless the prepared statement that
// where picks out of pg_prepared_statements (a condition on its text, with
// args) ran with its generic plan after at most five custom ones.
func (b *bundle) checkGenericPlans(name string, op func(tx pgx.Tx, i int) error, where string, args ...any) {
	b.t.Helper()
	conn, err := b.pool.Acquire(b.ctx)
	if err != nil {
		b.t.Fatal(err)
	}
	defer conn.Release()
	const calls = 12
	for i := range calls {
		if err := pgx.BeginFunc(b.ctx, conn, func(tx pgx.Tx) error { return op(tx, i) }); err != nil {
			b.t.Fatalf("%s, call %d: %v", name, i, err)
		}
	}
	var custom, generic int64
	if err := conn.QueryRow(b.ctx, `SELECT custom_plans, generic_plans FROM pg_prepared_statements WHERE `+where, args...).Scan(&custom, &generic); err != nil {
		b.t.Fatalf("find the statement of %s: %v", name, err)
	}
	if custom > 5 || custom+generic != calls {
		b.t.Errorf("%d calls of %s made %d custom and %d generic plans: want the generic plan, after at most 5 custom ones", calls, name, custom, generic)
	}
}

// A handler that emits a follow-up calls Enqueue once per message, so the
// statement must be planned once per connection, not on every call: its
// planning cost the server more than running it (0.2 ms against 0.09),
// and an emitting consumer handled messages at an eighth of the no-op rate.
// Messages without a stream and with one have statements of their own.
func TestOutboxEnqueueKeepsAGenericPlan(t *testing.T) {
	b := setupAlone(t)
	ob := b.newOutbox(inbox.OutboxConfig{})
	for _, stream := range []string{"", "s"} {
		b.checkGenericPlans(fmt.Sprintf("Enqueue (stream %q)", stream), func(tx pgx.Tx, i int) error {
			_, err := ob.Enqueue(b.ctx, tx, inbox.OutgoingMessage{ID: fmt.Sprintf("m-%s-%d", stream, i), RoutingKey: "q", Stream: stream, Body: []byte("x")})
			return err
		}, `statement LIKE '%INSERT INTO ' || $1 || '.outbox_messages%' AND (statement LIKE '%outbox_streams%') = $2`, b.q, stream != "")
	}
}

// A service that stores what it receives one message at a time (StoreTx in
// its own transaction, say) calls the store statement once per message: it
// must be planned once per connection too.
func TestStoreKeepsAGenericPlan(t *testing.T) {
	b := setupAlone(t)
	in := b.newInbox(inbox.Config{})
	b.checkGenericPlans("StoreTx", func(tx pgx.Tx, i int) error {
		m := inbox.Message{ID: fmt.Sprintf("m-%d", i), Topic: "t"}
		if i%2 == 1 {
			m.Stream, m.Seq = "s", int64(i/2+1)
		}
		_, err := in.StoreTx(b.ctx, tx, m)
		return err
	}, `statement LIKE '%INSERT INTO ' || $1 || '.inbox_messages%'`, b.q)
}

// Store's statement keeps an index probe of inbox_streams in its generic
// plan (it passed before Enqueue's fix too): this guards it.
func TestStoreProbesTheStreamKeyAsStreamsGrow(t *testing.T) {
	b := setupAlone(t)
	in := b.newInbox(inbox.Config{})
	b.checkKeyLookupAsTableGrows("inbox_streams", `
INSERT INTO `+b.q+`.inbox_streams (source, stream, next_seq, last_skip)
SELECT '', 'grown-' || g, 1, repeat('x', 200) FROM generate_series(1, 20000) g`,
		func(tx pgx.Tx, i int) error {
			_, err := in.StoreTx(b.ctx, tx, inbox.Message{ID: fmt.Sprintf("m-%d", i), Topic: "t", Stream: fmt.Sprintf("s-%d", i), Seq: 1})
			return err
		})
}

// The claims plan with enable_sort, enable_seqscan and jit off (see
// db.go); the
// handlers that run after them in the same transaction must plan with the
// session's settings again, for unordered and ordered messages alike.
func TestHandlersPlanWithTheSessionsSettings(t *testing.T) {
	b := setup(t)
	var session string
	if err := b.pool.QueryRow(b.ctx, `SELECT current_setting('enable_sort') || ' ' || current_setting('enable_seqscan') || ' ' || current_setting('jit')`).Scan(&session); err != nil {
		t.Fatal(err)
	}
	in := b.newInbox(inbox.Config{})
	settings := make(chan string, 2)
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		var s string
		if err := tx.QueryRow(ctx, `SELECT current_setting('enable_sort') || ' ' || current_setting('enable_seqscan') || ' ' || current_setting('jit')`).Scan(&s); err != nil {
			return err
		}
		settings <- m.ID + ": " + s
		return nil
	})
	b.start(in)
	if _, err := in.Store(b.ctx, inbox.Message{ID: "unordered", Topic: "t"}, inbox.Message{ID: "ordered", Topic: "t", Stream: "s", Seq: 1}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if s := <-settings; !strings.HasSuffix(s, ": "+session) {
			t.Errorf("a handler ran with enable_sort, enable_seqscan and jit %q, want the session's (%s)", s, session)
		}
	}
}
