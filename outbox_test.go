package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/inboxkit/inbox"
)

func (b *bundle) newOutbox(cfg inbox.OutboxConfig) *inbox.Outbox {
	b.t.Helper()
	cfg.Schema = b.schema
	ob, err := inbox.NewOutbox(b.pool, cfg)
	if err != nil {
		b.t.Fatal(err)
	}
	return ob
}

// outboxRow is what a test checks of an outgoing row.
type outboxRow struct {
	id, stream, state string
	seq               int64
	headers           map[string]string
}

func (b *bundle) outboxRows() []outboxRow {
	b.t.Helper()
	rows, err := b.pool.Query(b.ctx, `SELECT message_id, coalesce(stream, ''), coalesce(seq, 0), state, headers
		FROM `+b.q+`.outbox_messages ORDER BY id`)
	if err != nil {
		b.t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (outboxRow, error) {
		var o outboxRow
		err := r.Scan(&o.id, &o.stream, &o.seq, &o.state, &o.headers)
		return o, err
	})
	if err != nil {
		b.t.Fatal(err)
	}
	return out
}

func TestOutboxEnqueueValidation(t *testing.T) {
	b := setup(t)
	ob := b.newOutbox(inbox.OutboxConfig{MaxBodyBytes: 10, MaxHeaderBytes: 20,
		Destinations: map[string]inbox.Route{"shipments": {RoutingKey: "shipments"}}})
	ok := inbox.OutgoingMessage{ID: "ok", RoutingKey: "q"}
	cases := []struct {
		name   string
		msg    inbox.OutgoingMessage
		reason string
	}{
		{"no route", inbox.OutgoingMessage{ID: "a"}, inbox.ReasonMissingRoute},
		{"unknown destination", inbox.OutgoingMessage{ID: "a", Destination: "nowhere"}, inbox.ReasonUnknownDestination},
		{"two routes", inbox.OutgoingMessage{ID: "a", Destination: "shipments", RoutingKey: "q"}, inbox.ReasonAmbiguousRoute},
		{"long id", inbox.OutgoingMessage{ID: strings.Repeat("x", inbox.MaxIDBytes+1), RoutingKey: "q"}, inbox.ReasonIDTooLong},
		{"bad utf8 id", inbox.OutgoingMessage{ID: "a\xff", RoutingKey: "q"}, inbox.ReasonInvalidText},
		{"nul in type", inbox.OutgoingMessage{ID: "a", RoutingKey: "q", Type: "a\x00b"}, inbox.ReasonInvalidText},
		{"long routing key", inbox.OutgoingMessage{ID: "a", RoutingKey: strings.Repeat("k", 256)}, inbox.ReasonFieldTooLong},
		{"large body", inbox.OutgoingMessage{ID: "a", RoutingKey: "q", Body: make([]byte, 11)}, inbox.ReasonBodyTooLarge},
		{"large headers", inbox.OutgoingMessage{ID: "a", RoutingKey: "q", Headers: map[string]string{"k": strings.Repeat("v", 20)}}, inbox.ReasonHeadersTooLarge},
		{"bad header", inbox.OutgoingMessage{ID: "a", RoutingKey: "q", Headers: map[string]string{"k": "\xff"}}, inbox.ReasonInvalidText},
		{"repeated id", ok, inbox.ReasonRepeatedID},
	}
	for _, c := range cases {
		_, err := ob.Send(b.ctx, ok, c.msg)
		var inv *inbox.InvalidMessageError
		if !errors.As(err, &inv) || inv.Reason != c.reason || inv.Index != 1 {
			t.Errorf("%s: error %v, want an InvalidMessageError at index 1 with reason %q", c.name, err, c.reason)
		}
	}
	if n := len(b.outboxRows()); n != 0 {
		t.Fatalf("%d rows enqueued from invalid batches, want 0", n)
	}
	res, err := ob.Send(b.ctx, inbox.OutgoingMessage{Destination: "shipments", Body: []byte("0123456789")})
	if err != nil || res.Enqueued != 1 || res.IDs[0] == "" {
		t.Fatalf("valid message: %+v, %v", res, err)
	}
}

// A stream's sequence numbers are taken in the enqueuing transaction: a
// rollback leaves no gap, a duplicate ID takes no number, and a transaction
// that enqueues to a stream while another one holds it waits for that one's
// commit and numbers after it.
func TestOutboxStreamSequence(t *testing.T) {
	b := setup(t)
	ob := b.newOutbox(inbox.OutboxConfig{})
	send := func(id string) inbox.EnqueueResult {
		t.Helper()
		res, err := ob.Send(b.ctx, inbox.OutgoingMessage{ID: id, RoutingKey: "q", Stream: "order-1"})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if r := send("m1"); r.Seqs[0] != 1 {
		t.Fatalf("first seq %d, want 1", r.Seqs[0])
	}
	tx, err := b.pool.Begin(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ob.Enqueue(b.ctx, tx, inbox.OutgoingMessage{ID: "rolled-back", RoutingKey: "q", Stream: "order-1"}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(b.ctx); err != nil {
		t.Fatal(err)
	}
	if r := send("m2"); r.Seqs[0] != 2 {
		t.Fatalf("seq after a rollback %d, want 2", r.Seqs[0])
	}
	if r := send("m1"); r.New[0] || r.Duplicates != 1 {
		t.Fatalf("enqueueing m1 again: %+v, want a duplicate", r)
	}

	// First holds the stream's counter; second must wait for its commit.
	first, err := b.pool.Begin(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Rollback(b.ctx)
	r1, err := ob.Enqueue(b.ctx, first, inbox.OutgoingMessage{ID: "m3", RoutingKey: "q", Stream: "order-1"})
	if err != nil {
		t.Fatal(err)
	}
	second := make(chan inbox.EnqueueResult, 1)
	go func() {
		r, err := ob.Send(b.ctx, inbox.OutgoingMessage{ID: "m4", RoutingKey: "q", Stream: "order-1"})
		if err != nil {
			t.Error(err)
		}
		second <- r
	}()
	b.waitFor("the second enqueuer to wait on the stream's counter", 30e9, func() bool {
		return b.count(`SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND application_name = $1`, b.schema) == 1
	})
	if err := first.Commit(b.ctx); err != nil {
		t.Fatal(err)
	}
	r2 := <-second
	if r1.Seqs[0] != 3 || r2.Seqs[0] != 4 {
		t.Fatalf("seqs %d and %d, want 3 and 4 in commit order", r1.Seqs[0], r2.Seqs[0])
	}
	var seqs []int64
	for _, r := range b.outboxRows() {
		seqs = append(seqs, r.seq)
	}
	if !slices.Equal(seqs, []int64{1, 2, 3, 4}) {
		t.Fatalf("stored seqs %v, want 1..4", seqs)
	}
}

// A handler that enqueues and then fails is rolled back and run again; the
// second run enqueues the same IDs, and only its messages are in the outbox.
// The handler's trace context goes into each message's traceparent.
func TestOutboxIDsSurviveHandlerRetry(t *testing.T) {
	b := setup(t)
	spans := tracetest.NewSpanRecorder()
	in := b.newInbox(inbox.Config{TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))})
	ob := b.newOutbox(inbox.OutboxConfig{})
	var mu sync.Mutex
	runs := map[string][][]string{}
	in.Handle("order.paid", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		res, err := ob.Enqueue(ctx, tx,
			inbox.OutgoingMessage{RoutingKey: "shipments", Type: "shipment.requested", Stream: m.ID},
			inbox.OutgoingMessage{RoutingKey: "mails", Type: "mail.requested"})
		if err != nil {
			return err
		}
		more, err := ob.Enqueue(ctx, tx, inbox.OutgoingMessage{RoutingKey: "shipments", Type: "invoice.created", Stream: m.ID})
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		runs[m.ID] = append(runs[m.ID], append(res.IDs, more.IDs...))
		if len(runs[m.ID]) == 1 {
			return errors.New("fails once, after enqueueing")
		}
		return nil
	})
	b.start(in)
	if _, err := in.Store(b.ctx, inbox.Message{ID: "order-1", Topic: "order.paid"}, inbox.Message{ID: "order-2", Topic: "order.paid"}); err != nil {
		t.Fatal(err)
	}
	b.waitState("done", 2, 30e9)

	rows := b.outboxRows()
	if len(rows) != 6 {
		t.Fatalf("%d outgoing rows, want 6 (3 per order, none from the failed runs)", len(rows))
	}
	byID := map[string]outboxRow{}
	for _, r := range rows {
		byID[r.id] = r
	}
	mu.Lock()
	defer mu.Unlock()
	seen := map[string]bool{}
	for _, order := range []string{"order-1", "order-2"} {
		r := runs[order]
		if len(r) != 2 || !slices.Equal(r[0], r[1]) {
			t.Fatalf("%s: IDs of the two runs %v, want equal", order, r)
		}
		for i, id := range r[1] {
			row, ok := byID[id]
			if !ok || seen[id] {
				t.Fatalf("%s: ID %s not in the outbox once", order, id)
			}
			seen[id] = true
			wantSeq := map[int]int64{0: 1, 1: 0, 2: 2}[i]
			if row.seq != wantSeq {
				t.Errorf("%s message %d: seq %d, want %d", order, i, row.seq, wantSeq)
			}
			if !strings.Contains(row.headers["traceparent"], "-") {
				t.Errorf("%s message %d: no traceparent header: %v", order, i, row.headers)
			}
		}
	}
	// The traceparent names the trace of the handler's span.
	traces := map[string]bool{}
	for _, s := range spans.Ended() {
		if strings.HasPrefix(s.Name(), "inbox handle") {
			traces[s.SpanContext().TraceID().String()] = true
		}
	}
	for _, r := range rows {
		parts := strings.Split(r.headers["traceparent"], "-")
		if len(parts) != 4 || !traces[parts[1]] {
			t.Errorf("traceparent %q is not of a handler span's trace", r.headers["traceparent"])
		}
	}
}

// Claim hands out only the first unsent message of each stream; a dead
// message holds its stream back until it is retried.
func TestOutboxClaimOrderAndOperations(t *testing.T) {
	b := setup(t)
	ob := b.newOutbox(inbox.OutboxConfig{MaxAttempts: 2, RetryInitial: 1e6, RetryMax: 1e6})
	var msgs []inbox.OutgoingMessage
	for i := 1; i <= 3; i++ {
		msgs = append(msgs, inbox.OutgoingMessage{ID: fmt.Sprintf("s%d", i), RoutingKey: "q", Stream: "s"})
	}
	msgs = append(msgs, inbox.OutgoingMessage{ID: "free", RoutingKey: "q"})
	if _, err := ob.Send(b.ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	claimIDs := func() (*inbox.OutboxClaim, []string) {
		t.Helper()
		c, err := ob.Claim(b.ctx, 10)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, m := range c.Messages {
			ids = append(ids, m.ID)
		}
		return c, ids
	}
	c, ids := claimIDs()
	if !slices.Equal(ids, []string{"s1", "free"}) {
		t.Fatalf("claimed %v, want [s1 free]", ids)
	}
	// While s1 is claimed, a second claim gets nothing.
	c2, ids2 := claimIDs()
	c2.Release()
	if len(ids2) != 0 {
		t.Fatalf("second claim got %v while s1 and free are held", ids2)
	}
	if err := c.Settle(b.ctx, []int64{c.Messages[1].RowID}, []inbox.OutboxFailure{{RowID: c.Messages[0].RowID, Err: errors.New("unroutable: NO_ROUTE"), Dead: true}}); err != nil {
		t.Fatal(err)
	}
	c, ids = claimIDs()
	c.Release()
	if len(ids) != 0 {
		t.Fatalf("claimed %v behind a dead head, want nothing", ids)
	}
	st, err := ob.Stats(b.ctx)
	if err != nil || st.Pending != 2 || st.Dead != 1 || st.SentLastMinute != 1 || st.OldestPending <= 0 {
		t.Fatalf("stats %+v, %v; want 2 pending, 1 dead, 1 sent", st, err)
	}
	dead, err := ob.ListMessages(b.ctx, inbox.OutboxFilter{State: "dead"})
	if err != nil || len(dead) != 1 || dead[0].ID != "s1" || !strings.Contains(dead[0].LastError, "NO_ROUTE") {
		t.Fatalf("dead list %+v, %v", dead, err)
	}
	if n, err := ob.RetryDeadMessages(b.ctx, inbox.OutboxFilter{RowIDs: []int64{dead[0].RowID}}); err != nil || n != 1 {
		t.Fatalf("retry: %d, %v", n, err)
	}
	// A refused publish is retried, then dead after MaxAttempts; deleting
	// it lets the stream go on.
	for attempt := 1; attempt <= 2; attempt++ {
		var c *inbox.OutboxClaim
		b.waitFor("s1 to be due", 30e9, func() bool {
			c, ids = claimIDs()
			if len(ids) == 0 {
				c.Release()
			}
			return len(ids) > 0
		})
		if !slices.Equal(ids, []string{"s1"}) {
			t.Fatalf("attempt %d claimed %v, want [s1]", attempt, ids)
		}
		if err := c.Settle(b.ctx, nil, []inbox.OutboxFailure{{RowID: c.Messages[0].RowID, Err: errors.New("nack")}}); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := ob.DeleteDeadMessages(b.ctx, inbox.OutboxFilter{}); err != nil || n != 1 {
		t.Fatalf("delete: %d, %v (want s1, dead after 2 attempts)", n, err)
	}
	c, ids = claimIDs()
	c.Release()
	if !slices.Equal(ids, []string{"s2"}) {
		t.Fatalf("claimed %v after deleting s1, want [s2]", ids)
	}
}
