package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/internal/testenv"
)

func TestManyInstancesExactlyOneEffectEach(t *testing.T) {
	b := setup(t)
	const n = 10000
	var calls atomic.Int64
	var instances []*inbox.Inbox
	for i := 0; i < 3; i++ {
		// A pool per instance, as separate processes would have.
		pool := testenv.Pool(t, fmt.Sprintf("%s_i%d", b.schema, i), 10)
		in, err := inbox.New(pool, inbox.Config{Schema: b.schema, Workers: 8, PollInterval: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
			calls.Add(1)
			return b.effect(ctx, tx, m)
		})
		instances = append(instances, in)
		b.start(in)
	}
	// Store while the workers run, from every instance, in batches.
	all := msgs("t", n, "m")
	for i := 0; i < n; i += 250 {
		if _, err := instances[(i/250)%3].Store(b.ctx, all[i:i+250]...); err != nil {
			t.Fatal(err)
		}
	}
	b.waitState("done", n, 2*time.Minute)
	if got := b.count(`SELECT count(*) FROM ` + b.q + `.effects`); got != n {
		t.Fatalf("effects = %d, want %d", got, n)
	}
	if got := calls.Load(); got != n {
		t.Fatalf("handler calls = %d, want %d (no failures were injected)", got, n)
	}
}

func TestRetryThenSuccess(t *testing.T) {
	b := setup(t)
	in := b.newInbox(inbox.Config{})
	var calls counter
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		if err := b.effect(ctx, tx, m); err != nil {
			return err
		}
		if n := calls.add(m.ID); n < 3 {
			// The effect written above must be rolled back with the failure.
			return fmt.Errorf("flaky failure %d", n)
		}
		if m.Attempt != 3 {
			return inbox.Permanent(fmt.Errorf("attempt = %d, want 3", m.Attempt))
		}
		return nil
	})
	if _, err := in.Store(b.ctx, msgs("t", 5, "m")...); err != nil {
		t.Fatal(err)
	}
	b.start(in)
	b.waitState("done", 5, 30*time.Second)
	if n := b.count(`SELECT count(*) FROM ` + b.q + `.effects`); n != 5 {
		t.Fatalf("effects = %d, want 5", n)
	}
	if n := b.count(`SELECT count(*) FROM ` + b.q + `.inbox_messages WHERE attempts = 3`); n != 5 {
		t.Fatalf("messages with 3 attempts = %d, want 5", n)
	}
}

func TestPermanentErrorGoesDeadAtOnce(t *testing.T) {
	b := setup(t)
	in := b.newInbox(inbox.Config{})
	var calls atomic.Int64
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		calls.Add(1)
		return inbox.Permanent(errors.New("unknown customer"))
	})
	if _, err := in.Store(b.ctx, msgs("t", 1, "m")...); err != nil {
		t.Fatal(err)
	}
	b.start(in)
	b.waitState("dead", 1, 30*time.Second)
	// No claim takes a dead message, so every run it will ever have has
	// happened by now.
	if calls.Load() != 1 {
		t.Fatalf("handler calls = %d, want 1", calls.Load())
	}
	dead, err := in.ListMessages(b.ctx, inbox.MessageFilter{State: inbox.StateDead})
	if err != nil {
		t.Fatal(err)
	}
	if len(dead) != 1 || !strings.Contains(dead[0].LastError, "unknown customer") || dead[0].Attempts != 1 {
		t.Fatalf("dead = %+v", dead)
	}
}

func TestPanicIsAFailedAttemptWithStack(t *testing.T) {
	b := setup(t)
	in := b.newInbox(inbox.Config{MaxAttempts: 2})
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		if err := b.effect(ctx, tx, m); err != nil {
			return err
		}
		panic("boom")
	})
	if _, err := in.Store(b.ctx, msgs("t", 1, "m")...); err != nil {
		t.Fatal(err)
	}
	b.start(in)
	b.waitState("dead", 1, 30*time.Second)
	m, err := in.ListMessages(b.ctx, inbox.MessageFilter{State: inbox.StateDead})
	if err != nil {
		t.Fatal(err)
	}
	if m[0].Attempts != 2 || !strings.Contains(m[0].LastError, "boom") || !strings.Contains(m[0].LastError, "worker_test.go") {
		t.Fatalf("dead message = %+v", m[0])
	}
	if n := b.count(`SELECT count(*) FROM ` + b.q + `.effects`); n != 0 {
		t.Fatalf("a panicking handler's writes were committed: %d effects", n)
	}
}

func TestMaxAttemptsDeadRequeuedDone(t *testing.T) {
	b := setup(t)
	in := b.newInbox(inbox.Config{MaxAttempts: 3})
	var healthy atomic.Bool
	var calls atomic.Int64
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		calls.Add(1)
		if !healthy.Load() {
			return errors.New("downstream unavailable")
		}
		return b.effect(ctx, tx, m)
	})
	if _, err := in.Store(b.ctx, msgs("t", 2, "m")...); err != nil {
		t.Fatal(err)
	}
	b.start(in)
	b.waitState("dead", 2, 30*time.Second)
	if calls.Load() != 6 {
		t.Fatalf("handler calls = %d, want 3 attempts × 2 messages", calls.Load())
	}
	healthy.Store(true)
	dead, _ := in.ListMessages(b.ctx, inbox.MessageFilter{State: inbox.StateDead})
	if err := in.RetryDeadMessage(b.ctx, dead[0].RowID); err != nil {
		t.Fatal(err)
	}
	if n, err := in.RetryDeadMessages(b.ctx, inbox.MessageFilter{ErrorContains: "DOWNSTREAM"}); err != nil || n != 1 {
		t.Fatalf("RetryDeadMessages = %d, %v; want 1", n, err)
	}
	if err := in.RetryDeadMessage(b.ctx, dead[0].RowID); !errors.Is(err, inbox.ErrNotFound) {
		t.Fatalf("retrying a message that is not dead: %v, want ErrNotFound", err)
	}
	b.waitState("done", 2, 30*time.Second)
	if n := b.count(`SELECT count(*) FROM ` + b.q + `.effects`); n != 2 {
		t.Fatalf("effects = %d, want 2", n)
	}
}

func TestRetryAfterSetsTheDelay(t *testing.T) {
	b := setup(t)
	in := b.newInbox(inbox.Config{})
	var first atomic.Bool
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		if first.CompareAndSwap(false, true) {
			return inbox.RetryAfter(time.Hour, errors.New("rate limited"))
		}
		return nil
	})
	if _, err := in.Store(b.ctx, msgs("t", 1, "m")...); err != nil {
		t.Fatal(err)
	}
	b.start(in)
	b.waitFor("the retry to be scheduled", 30*time.Second, func() bool {
		return b.count(`SELECT count(*) FROM `+b.q+`.inbox_messages WHERE attempts = 1 AND run_at > now() + interval '50 minutes'`) == 1
	})
}

func TestBackendKilledMidHandlerProcessedOnceLater(t *testing.T) {
	b := setup(t)
	in := b.newInbox(inbox.Config{Workers: 2})
	pids := make(chan uint32, 1)
	var calls atomic.Int64
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		if err := b.effect(ctx, tx, m); err != nil {
			return err
		}
		if calls.Add(1) == 1 {
			pids <- tx.Conn().PgConn().PID()
			// Hold the claim while the backend dies under us; the lock goes
			// with it, so the other worker takes the message over at once.
			select {
			case <-ctx.Done():
			case <-time.After(2 * time.Second):
			}
		}
		return nil
	})
	if _, err := in.Store(b.ctx, msgs("t", 1, "m")...); err != nil {
		t.Fatal(err)
	}
	b.start(in)
	pid := <-pids
	b.exec(`SELECT pg_terminate_backend($1)`, pid)
	b.waitState("done", 1, 30*time.Second)
	if n := b.count(`SELECT count(*) FROM ` + b.q + `.effects`); n != 1 {
		t.Fatalf("effects = %d, want 1", n)
	}
	if calls.Load() < 2 {
		t.Fatalf("handler calls = %d; the killed attempt should have been retried", calls.Load())
	}
}

// Handlers of one batch share its transaction; each one's writes stand or
// fall with its own outcome, whatever its neighbours did: a failure after
// writing keeps none of its writes and none of its neighbours' are lost,
// an ordered stream's as much as the unordered ones'.
func TestFailingHandlerUndoesOnlyItsOwnWrites(t *testing.T) {
	b := setup(t)
	in := b.newInbox(inbox.Config{Workers: 1, MaxAttempts: 1})
	// By ID: write then succeed, write then fail, fail without writing.
	fate := func(id string) string { return strings.SplitN(id, "-", 2)[0] }
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		if fate(m.ID) == "quiet" {
			return errors.New("fails without writing")
		}
		if err := b.effect(ctx, tx, m); err != nil {
			return err
		}
		if fate(m.ID) == "undo" {
			return errors.New("fails after writing")
		}
		return nil
	})
	var batch []inbox.Message
	for i, f := range []string{"keep", "undo", "keep", "keep", "quiet", "keep", "undo", "undo", "keep", "quiet"} {
		batch = append(batch, inbox.Message{ID: fmt.Sprintf("%s-%d", f, i), Topic: "t"})
		// The same fates in a stream, whose messages run one after the
		// other in the claim.
		batch = append(batch, inbox.Message{ID: fmt.Sprintf("%s-s%d", f, i), Topic: "t", Stream: fmt.Sprintf("s%d", i), Seq: 1})
	}
	if _, err := in.Store(b.ctx, batch...); err != nil {
		t.Fatal(err)
	}
	b.start(in)
	b.waitState("done", 10, 10*time.Second)
	b.waitState("dead", 10, 10*time.Second)
	rows, err := b.pool.Query(b.ctx, `SELECT message_id FROM `+b.q+`.effects ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	kept, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, m := range batch {
		if fate(m.ID) == "keep" {
			want = append(want, m.ID)
		}
	}
	slices.Sort(want)
	if !slices.Equal(kept, want) {
		t.Errorf("effects kept %v, want exactly those of the handlers that succeeded: %v", kept, want)
	}
}
