package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/internal/sqlident"
	"github.com/inboxkit/inbox/internal/testenv"
)

// The crash tests re-execute the test binary as a child process that runs an
// inbox whose handler ends the process for one message.
const (
	crashSchemaEnv = "INBOX_TEST_CRASH_SCHEMA"
	crashKillerEnv = "INBOX_TEST_CRASH_KILLER"
	crashExitCode  = 3
	crashAttempts  = 2 // the child's MaxAttempts
)

func TestMain(m *testing.M) {
	if schema := os.Getenv(crashSchemaEnv); schema != "" {
		os.Exit(crashChild(schema, os.Getenv(crashKillerEnv)))
	}
	os.Exit(m.Run())
}

// crashChild handles the schema's messages until none is left to run
// (pending outside a parked stream), then exits 0. Its handler calls
// os.Exit for message killer, in the middle of a batch.
func crashChild(schema, killer string) int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg, err := pgxpool.ParseConfig(testenv.PostgresURL())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cfg.MaxConns = 5
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer pool.Close()
	q := sqlident.Quote(schema)
	in, err := inbox.New(pool, inbox.Config{Schema: schema, Workers: 2, BatchSize: 20, MaxAttempts: crashAttempts,
		PollInterval: 20 * time.Millisecond, DisableListen: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		if m.ID == killer {
			os.Exit(crashExitCode)
		}
		_, err := tx.Exec(ctx, `INSERT INTO `+q+`.effects (message_id) VALUES ($1)`, m.ID)
		return err
	})
	if err := in.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer in.Stop(context.Background())
	for ctx.Err() == nil {
		var left int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM `+q+`.inbox_messages m
			WHERE state = 'pending' AND NOT EXISTS (SELECT 1 FROM `+q+`.inbox_streams s
				WHERE s.source = m.source AND s.stream = m.stream AND s.parked_at IS NOT NULL)`).Scan(&left)
		if err == nil && left == 0 {
			return 0
		}
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Fprintln(os.Stderr, "crash child: messages still pending after a minute")
	return 1
}

// runCrashChildren runs the child until it exits 0 and returns how many
// times the handler took it down.
func (b *bundle) runCrashChildren(killer string) int {
	b.t.Helper()
	deaths := 0
	for run := 0; run < 10; run++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashSchemaEnv+"="+b.schema, crashKillerEnv+"="+killer)
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		switch {
		case err == nil:
			return deaths
		case errors.As(err, &exit) && exit.ExitCode() == crashExitCode:
			deaths++
		default:
			b.t.Fatalf("crash child: %v\n%s", err, out)
		}
	}
	b.t.Fatalf("the handler took the process down %d times and the message still runs", deaths)
	return deaths
}

// TestHandlerKillingTheProcessGoesDead: a handler that ends the process
// (os.Exit here; a Go fatal error or an OOM kill alike) for one message
// must not loop forever. Its batch-mates are handled once each, the message
// runs alone MaxAttempts times and is then dead with the reason, and an
// ordered one parks its stream.
func TestHandlerKillingTheProcessGoesDead(t *testing.T) {
	t.Run("unordered", func(t *testing.T) {
		b := setup(t)
		in := b.newInbox(inbox.Config{})
		batch := append(msgs("t", 1, "killer"), msgs("t", 5, "mate")...)
		if _, err := in.Store(b.ctx, batch...); err != nil {
			t.Fatal(err)
		}
		if deaths := b.runCrashChildren("killer-0"); deaths != crashAttempts+1 {
			t.Fatalf("the handler took the process down %d times, want once in its batch and %d times alone", deaths, crashAttempts)
		}
		b.checkCrashOutcome("killer-0", 5, 0)
	})
	t.Run("ordered", func(t *testing.T) {
		b := setup(t)
		in := b.newInbox(inbox.Config{})
		batch := msgs("t", 3, "mate")
		for seq := int64(1); seq <= 3; seq++ {
			id := fmt.Sprintf("s-%d", seq)
			if seq == 2 {
				id = "killer"
			}
			batch = append(batch, inbox.Message{ID: id, Topic: "t", Stream: "s", Seq: seq})
		}
		if _, err := in.Store(b.ctx, batch...); err != nil {
			t.Fatal(err)
		}
		if deaths := b.runCrashChildren("killer"); deaths != crashAttempts+1 {
			t.Fatalf("the handler took the process down %d times, want once in its batch and %d times alone", deaths, crashAttempts)
		}
		// 3 mates and s-1 handled; s-3 waits behind the dead one, still a
		// suspect from the batch that died.
		b.checkCrashOutcome("killer", 4, 1)
		var reason string
		if err := b.pool.QueryRow(b.ctx, `SELECT coalesce(parked_reason, '') FROM `+b.q+`.inbox_streams WHERE stream = 's'`).Scan(&reason); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(reason, "process died during the handler") {
			t.Fatalf("stream parked_reason = %q, want it parked by the dead message", reason)
		}
	})
}

func (b *bundle) checkCrashOutcome(killer string, handled, startsLeft int) {
	b.t.Helper()
	var state, lastError string
	if err := b.pool.QueryRow(b.ctx, `SELECT state, coalesce(last_error, '') FROM `+b.q+`.inbox_messages WHERE message_id = $1`, killer).Scan(&state, &lastError); err != nil {
		b.t.Fatal(err)
	}
	want := fmt.Sprintf("process died during the handler %d times", crashAttempts)
	if state != "dead" || !strings.Contains(lastError, want) {
		b.t.Fatalf("killer is %s with %q, want dead with %q", state, lastError, want)
	}
	// The effects table's key would have failed a second effect.
	if n := b.count(`SELECT count(*) FROM ` + b.q + `.effects`); n != handled {
		b.t.Fatalf("effects = %d, want %d: the batch-mates handled once each", n, handled)
	}
	if n := b.count(`SELECT count(*) FROM ` + b.q + `.inbox_messages WHERE state = 'done'`); n != handled {
		b.t.Fatalf("done = %d, want %d", n, handled)
	}
	if n := b.count(`SELECT count(*) FROM ` + b.q + `.inbox_attempt_starts`); n != startsLeft {
		b.t.Fatalf("attempt starts left = %d, want %d", n, startsLeft)
	}
}
