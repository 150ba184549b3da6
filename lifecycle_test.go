package inbox_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/internal/testenv"
	"github.com/inboxkit/inbox/migrations"
)

func TestStopWaitsForHandlersInFlight(t *testing.T) {
	b := setup(t)
	in := b.newInbox(inbox.Config{Workers: 2})
	started := make(chan struct{}, 2)
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		started <- struct{}{}
		time.Sleep(300 * time.Millisecond)
		return b.effect(ctx, tx, m)
	})
	if _, err := in.Store(b.ctx, msgs("t", 2, "m")...); err != nil {
		t.Fatal(err)
	}
	if err := in.Start(b.ctx); err != nil {
		t.Fatal(err)
	}
	<-started
	if err := in.Stop(b.ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	// The handlers in flight finished and committed.
	done := b.count(`SELECT count(*) FROM ` + b.q + `.inbox_messages WHERE state = 'done'`)
	if done == 0 || done != b.count(`SELECT count(*) FROM `+b.q+`.effects`) {
		t.Fatalf("after a graceful stop: %d done", done)
	}
}

func TestStopCancelsHandlersAtDeadline(t *testing.T) {
	b := setup(t)
	in := b.newInbox(inbox.Config{Workers: 1})
	started := make(chan struct{})
	var once sync.Once
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		if err := b.effect(ctx, tx, m); err != nil {
			return err
		}
		once.Do(func() { close(started) })
		<-ctx.Done()
		return ctx.Err()
	})
	if _, err := in.Store(b.ctx, msgs("t", 1, "m")...); err != nil {
		t.Fatal(err)
	}
	if err := in.Start(b.ctx); err != nil {
		t.Fatal(err)
	}
	<-started
	ctx, cancel := context.WithTimeout(b.ctx, 200*time.Millisecond)
	defer cancel()
	if err := in.Stop(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Stop = %v, want deadline exceeded", err)
	}
	// Nothing stays claimed: the message is pending, no attempt counted,
	// the cancelled handler's write rolled back, and a new Inbox runs it.
	if n := b.count(`SELECT count(*) FROM ` + b.q + `.inbox_messages WHERE state = 'pending' AND attempts = 0`); n != 1 {
		t.Fatalf("pending with no attempt = %d, want 1", n)
	}
	in2 := b.newInbox(inbox.Config{})
	in2.Handle("t", b.effect)
	b.start(in2)
	b.waitState("done", 1, 10*time.Second)
}

func TestWakeUpAcrossInstancesByNotify(t *testing.T) {
	b := setup(t)
	// The worker polls once an hour: only NOTIFY can wake it in time.
	worker := b.newInbox(inbox.Config{PollInterval: time.Hour})
	var handled atomic.Int64
	listening := make(chan struct{})
	var once sync.Once
	worker.SetListenHook(func(uint32) { once.Do(func() { close(listening) }) })
	worker.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		handled.Add(1)
		return nil
	})
	b.start(worker)
	<-listening
	time.Sleep(100 * time.Millisecond) // the workers' first poll is over
	producer := b.newInbox(inbox.Config{})
	if _, err := producer.Store(b.ctx, msgs("t", 1, "m")...); err != nil {
		t.Fatal(err)
	}
	b.waitFor("a handler woken by NOTIFY", 5*time.Second, func() bool { return handled.Load() == 1 })
}

func TestListenConnectionKilledPollingGoesOn(t *testing.T) {
	b := setup(t)
	worker := b.newInbox(inbox.Config{PollInterval: 200 * time.Millisecond})
	pids := make(chan uint32, 10)
	worker.SetListenHook(func(pid uint32) { pids <- pid })
	worker.Handle("t", b.effect)
	b.start(worker)
	b.exec(`SELECT pg_terminate_backend($1)`, <-pids)
	producer := b.newInbox(inbox.Config{})
	if _, err := producer.Store(b.ctx, msgs("t", 20, "m")...); err != nil {
		t.Fatal(err)
	}
	b.waitState("done", 20, 10*time.Second)
	select {
	case <-pids: // the listener reconnected
	case <-time.After(10 * time.Second):
		t.Fatal("listener did not reconnect")
	}
}

func TestHandlerCannotEndTheTransaction(t *testing.T) {
	b := setup(t)
	in := b.newInbox(inbox.Config{MaxAttempts: 1})
	errs := make(chan error, 2)
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		errs <- tx.Commit(ctx)
		errs <- tx.Rollback(ctx)
		return nil
	})
	if _, err := in.Store(b.ctx, msgs("t", 1, "m")...); err != nil {
		t.Fatal(err)
	}
	b.start(in)
	for i := 0; i < 2; i++ {
		if err := <-errs; !errors.Is(err, inbox.ErrTxOwned) {
			t.Fatalf("got %v, want ErrTxOwned", err)
		}
	}
	b.waitState("done", 1, 10*time.Second)
}

func TestSwallowedSQLErrorIsAFailure(t *testing.T) {
	b := setup(t)
	in := b.newInbox(inbox.Config{MaxAttempts: 1})
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		_, _ = tx.Exec(ctx, `SELECT * FROM no_such_table`)
		return nil // the handler ignores the error; the inbox must not
	})
	in.Handle("ok", b.effect)
	if _, err := in.Store(b.ctx, append(msgs("t", 1, "bad"), msgs("ok", 3, "good")...)...); err != nil {
		t.Fatal(err)
	}
	b.start(in)
	b.waitState("dead", 1, 10*time.Second)
	b.waitState("done", 3, 10*time.Second)
}

func TestMigrationsConcurrentIdempotentAndDown(t *testing.T) {
	t.Parallel()
	pool := testenv.Pool(t, "migrations_test", 10)
	ctx := context.Background()
	schema := testenv.UniqueName("mig")
	t.Cleanup(func() { _, _ = pool.Exec(ctx, `DROP SCHEMA IF EXISTS `+schema+` CASCADE`) })
	var wg sync.WaitGroup
	applied := make(chan []int, 5)
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := migrations.Up(ctx, pool, schema)
			if err != nil {
				t.Error(err)
			}
			applied <- v
		}()
	}
	wg.Wait()
	close(applied)
	total := 0
	for v := range applied {
		total += len(v)
	}
	all, err := migrations.All()
	if err != nil {
		t.Fatal(err)
	}
	if total != len(all) {
		t.Fatalf("versions applied across 5 concurrent Up calls = %d, want %d", total, len(all))
	}
	status, err := migrations.List(ctx, pool, schema)
	if err != nil || len(status) == 0 || !status[len(status)-1].Applied {
		t.Fatalf("status = %+v, %v", status, err)
	}
	if _, err := migrations.Down(ctx, pool, schema, 0); err != nil {
		t.Fatal(err)
	}
	var exists bool
	_ = pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, schema+".inbox_messages").Scan(&exists)
	if exists {
		t.Fatal("inbox_messages still exists after Down to 0")
	}
	if v, err := migrations.Up(ctx, pool, schema); err != nil || len(v) != len(all) {
		t.Fatalf("Up after Down = %v, %v", v, err)
	}
	if _, err := migrations.Up(ctx, pool, "bad-name; DROP TABLE x"); err == nil {
		t.Fatal("an invalid schema name was accepted")
	}
}
