package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/inboxkit/inbox"
)

// stuckHandler ignores its context and blocks until release is called;
// started is closed when it first runs.
func stuckHandler() (h inbox.Handler, started <-chan struct{}, release func()) {
	ch := make(chan struct{})
	released := make(chan struct{})
	var once sync.Once
	return func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		once.Do(func() { close(ch) })
		<-released
		return nil
	}, ch, func() { close(released) }
}

func TestStopReturnsByItsDeadlineWhateverTheHandler(t *testing.T) {
	b := setup(t)
	// No server-side limit comes into play within the test.
	in := b.newInbox(inbox.Config{Workers: 1, HandlerTimeout: time.Hour})
	h, started, release := stuckHandler()
	defer release()
	in.Handle("t", h)
	if _, err := in.Store(b.ctx, msgs("t", 1, "m")...); err != nil {
		t.Fatal(err)
	}
	b.start(in)
	<-started
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(b.ctx, 200*time.Millisecond)
		defer cancel()
		stopped <- in.Stop(ctx)
	}()
	select {
	case err := <-stopped:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Stop = %v, want deadline exceeded", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Stop did not return while a handler ignored its cancellation")
	}
	// The claim is released: another Inbox handles the message while the
	// first handler still blocks.
	in2 := b.newInbox(inbox.Config{})
	in2.Handle("t", b.effect)
	b.start(in2)
	b.waitState("done", 1, 30*time.Second)
}

func TestStuckClaimIsEndedByTheServer(t *testing.T) {
	b := setup(t)
	// The handler ignores the cancellation at HandlerTimeout; the server
	// ends the claim's session once it has been idle a little longer.
	in := b.newInbox(inbox.Config{Workers: 1, HandlerTimeout: 100 * time.Millisecond})
	h, started, release := stuckHandler()
	defer release()
	in.Handle("t", h)
	if _, err := in.Store(b.ctx, msgs("t", 1, "m")...); err != nil {
		t.Fatal(err)
	}
	b.start(in)
	<-started
	in2 := b.newInbox(inbox.Config{})
	in2.Handle("t", b.effect)
	b.start(in2)
	b.waitState("done", 1, 60*time.Second)
	if n := b.count(`SELECT count(*) FROM ` + b.q + `.effects`); n != 1 {
		t.Fatalf("effects = %d, want 1", n)
	}
}

func TestBatchBudgetBoundsAClaim(t *testing.T) {
	b := setup(t)
	const budget = 50 * time.Millisecond
	in := b.newInbox(inbox.Config{Workers: 1, BatchSize: 10, BatchBudget: budget})
	release := make(chan struct{})
	slowStarted := make(chan time.Time, 1)
	var mu sync.Mutex
	xids := map[string]string{}
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		var xid string
		if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&xid); err != nil {
			return err
		}
		mu.Lock()
		xids[m.ID] = xid
		mu.Unlock()
		if m.ID == "a-slow-0" {
			slowStarted <- time.Now()
			<-release
		}
		return b.effect(ctx, tx, m)
	})
	// Store sorts by ID: the slow one comes first.
	batch := append(msgs("t", 1, "a-slow"), msgs("t", 5, "b-fast")...)
	for seq := int64(1); seq <= 3; seq++ {
		batch = append(batch, inbox.Message{ID: fmt.Sprintf("s-%d", seq), Topic: "t", Stream: "s", Seq: seq})
	}
	if _, err := in.Store(b.ctx, batch...); err != nil {
		t.Fatal(err)
	}
	b.start(in)
	// The slow handler outlasts the budget; its batch-mates, claimed with
	// it, must not wait in its transaction for its end and then run in it.
	start := <-slowStarted
	b.waitFor("the budget to be spent", 10*time.Second, func() bool { return time.Since(start) > budget })
	close(release)
	b.waitState("done", len(batch), 30*time.Second)
	mu.Lock()
	defer mu.Unlock()
	for id, xid := range xids {
		if id != "a-slow-0" && xid == xids["a-slow-0"] {
			t.Errorf("%s ran in the slow message's transaction, after the budget was spent", id)
		}
	}
}

func TestPermanentErrorThatBreaksTheTransactionGoesDeadAtOnce(t *testing.T) {
	b := setup(t)
	// One worker: with more, another could take the message in the moment
	// between its connection's end and the dead verdict's record.
	in := b.newInbox(inbox.Config{Workers: 1, MaxAttempts: 5})
	var calls counter
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		if !strings.HasPrefix(m.ID, "break") {
			return b.effect(ctx, tx, m)
		}
		calls.add(m.ID)
		// The error that makes the handler give up also ends its session.
		_, err := tx.Exec(ctx, `SELECT pg_terminate_backend(pg_backend_pid())`)
		return inbox.Permanent(fmt.Errorf("cannot go on: %w", err))
	})
	batch := []inbox.Message{
		{ID: "break-unordered", Topic: "t"},
		{ID: "break-ordered", Topic: "t", Stream: "s", Seq: 1},
		{ID: "after", Topic: "t", Stream: "s", Seq: 2},
	}
	if _, err := in.Store(b.ctx, batch...); err != nil {
		t.Fatal(err)
	}
	b.start(in)
	b.waitState("dead", 2, 30*time.Second)
	// No claim takes a dead message: every run it will have has happened.
	for _, id := range []string{"break-unordered", "break-ordered"} {
		if n := calls.get(id); n != 1 {
			t.Errorf("%s ran %d times, want once", id, n)
		}
	}
	streams, err := in.ListStreams(b.ctx, inbox.StreamFilter{Parked: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(streams) != 1 || !strings.Contains(streams[0].ParkedReason, "cannot go on") || streams[0].Pending != 1 {
		t.Fatalf("parked streams = %+v, want s parked by its dead message with 1 pending", streams)
	}
}
