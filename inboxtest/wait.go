package inboxtest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Querier is what the waiting helpers need: a *pgxpool.Pool, a *pgx.Conn or
// a pgx.Tx.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Counts is how many messages of an inbox are in each state.
type Counts struct {
	Pending, Done, Dead int
	// Duplicates counts the done messages that no handler ran for: a worker
	// marked them done because their stream had already applied their
	// sequence number. Done includes them.
	Duplicates int
}

// Total is the number of stored messages.
func (c Counts) Total() int { return c.Pending + c.Done + c.Dead }

// Handled is the number of done messages whose handler committed.
func (c Counts) Handled() int { return c.Done - c.Duplicates }

func (c Counts) String() string {
	s := fmt.Sprintf("%d pending, %d done, %d dead", c.Pending, c.Done, c.Dead)
	if c.Duplicates > 0 {
		s += fmt.Sprintf(" (%d of the done are duplicates)", c.Duplicates)
	}
	return s
}

// duplicateError starts the last_error of a message that a worker marked
// done without running its handler.
const duplicateError = "duplicate:"

// CountMessages returns how many messages of the inbox in schema are in
// each state. Rows removed by retention are not counted.
func CountMessages(t testing.TB, db Querier, schema string) Counts {
	t.Helper()
	c, err := countMessages(context.Background(), db, schema)
	if err != nil {
		t.Fatalf("inboxtest: %v", err)
	}
	return c
}

func countMessages(ctx context.Context, db Querier, schema string) (Counts, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var c Counts
	err := db.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state = 'pending'),
		count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state = 'dead'),
		count(*) FILTER (WHERE state = 'done' AND starts_with(last_error, $1))
		FROM `+pgx.Identifier{schema, "inbox_messages"}.Sanitize(), duplicateError).Scan(&c.Pending, &c.Done, &c.Dead, &c.Duplicates)
	if err != nil {
		return Counts{}, fmt.Errorf("count messages in %s: %w", schema, err)
	}
	return c, nil
}

// WaitHandled waits until at least n messages of the inbox in schema are
// handled (done by their handler: messages marked done as duplicates do not
// count), and fails the test if that takes longer than timeout or if a
// message goes dead meanwhile (a test that expects dead messages uses
// WaitFor). The failure names the messages still pending or dead, with
// their last errors.
func WaitHandled(t testing.TB, db Querier, schema string, n int, timeout time.Duration) {
	t.Helper()
	var last Counts
	err := poll(timeout, func() (bool, error) {
		c, err := countMessages(context.Background(), db, schema)
		if err != nil {
			return false, err
		}
		last = c
		if c.Dead > 0 {
			return false, fmt.Errorf("%d message(s) went dead", c.Dead)
		}
		return c.Handled() >= n, nil
	})
	if err != nil {
		t.Fatalf("inboxtest: waiting for %d handled messages in %s (%s): %v%s", n, schema, last, err, unfinished(db, schema))
	}
}

// WaitFor waits until the inbox in schema satisfies cond, checked every
// 20ms, and fails the test after timeout.
func WaitFor(t testing.TB, db Querier, schema string, timeout time.Duration, cond func(Counts) bool) {
	t.Helper()
	var last Counts
	err := poll(timeout, func() (bool, error) {
		c, err := countMessages(context.Background(), db, schema)
		last = c
		return err == nil && cond(c), err
	})
	if err != nil {
		t.Fatalf("inboxtest: waiting on %s (%s): %v%s", schema, last, err, unfinished(db, schema))
	}
}

// poll calls check every 20ms until it reports true or an error, or timeout
// passes.
func poll(timeout time.Duration, check func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := check()
		if err != nil || ok {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// unfinished describes up to 5 messages that are not done, for a failure
// message.
func unfinished(db Querier, schema string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rows, err := db.Query(ctx, `SELECT id, message_id, topic, state, attempts, coalesce(stream, ''), coalesce(seq, 0), coalesce(last_error, '')
		FROM `+pgx.Identifier{schema, "inbox_messages"}.Sanitize()+`
		WHERE state <> 'done' ORDER BY state = 'dead' DESC, id LIMIT 5`)
	if err != nil {
		return ""
	}
	var b strings.Builder
	var (
		rowID                               int64
		id, topic, state, stream, lastError string
		attempts                            int
		seq                                 int64
	)
	_, err = pgx.ForEachRow(rows, []any{&rowID, &id, &topic, &state, &attempts, &stream, &seq, &lastError}, func() error {
		fmt.Fprintf(&b, "\n\tmessage %d (id %q, topic %s", rowID, id, topic)
		if stream != "" {
			fmt.Fprintf(&b, ", stream %s seq %d", stream, seq)
		}
		fmt.Fprintf(&b, "): %s after %d attempts", state, attempts)
		if lastError != "" {
			fmt.Fprintf(&b, ": %s", firstLine(lastError))
		}
		return nil
	})
	if err != nil {
		return ""
	}
	return b.String()
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
