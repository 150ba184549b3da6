package inbox

import (
	"context"
	"errors"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The shared database helpers: what a statement runs on, rolling back,
// savepoints, and text fit for a column.

// execer runs a statement on a pool, connection or transaction.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// querier reads rows from a pool, connection or transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// beginner starts a transaction on a pool or a connection.
type beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// inIndexOrder makes the statements that follow it, in the same
// transaction, walk indexes in order, find rows by their keys and stop at
// their limits, whatever the statistics say. When a table's statistics lag
// behind a burst of rows (a new table, a backlog grown since the last
// ANALYZE), the planner expects fewer matching rows than there are, so it
// reads them all and sorts them, or scans a table to find a few keys:
// every batch then costs the whole backlog (25 ms for 20,000 rows, against
// 1 ms, for the relay's claim). A generic plan, which a prepared statement
// gets after five runs and keeps while the tables change, makes that
// lasting: made while a queue was quiet, the workers' plans scanned
// inbox_messages for a stream's messages and read and sorted every due
// message in each claim (seconds a claim in a soak, and a backlog that
// then only grew). Without sorts where an index gives the order, and
// without sequential scans, no such plan is left. Nor JIT: where a sort is
// still needed, it carries the planner's penalty, far above
// jit_above_cost, and compiling took seconds a statement.
const inIndexOrder = `SELECT set_config('enable_sort', 'off', true), set_config('enable_seqscan', 'off', true),
       set_config('jit', 'off', true)`

// claimPlanning is inIndexOrder for a claim's transaction, which the
// handlers share: it keeps the session's settings, and handlerPlanning,
// before the handlers run, puts them back, so that their statements are
// planned as the application configured.
const (
	claimPlanning = `SELECT set_config('enable_sort', 'off', true), set_config('enable_seqscan', 'off', true),
       set_config('jit', 'off', true)
FROM (SELECT set_config('inbox.enable_sort', current_setting('enable_sort'), true),
             set_config('inbox.enable_seqscan', current_setting('enable_seqscan'), true),
             set_config('inbox.jit', current_setting('jit'), true)) saved`
	handlerPlanning = `SELECT set_config('enable_sort', current_setting('inbox.enable_sort'), true),
       set_config('enable_seqscan', current_setting('inbox.enable_seqscan'), true),
       set_config('jit', current_setting('inbox.jit'), true)`
)

// execInIndexOrder runs sql, a statement that takes a batch in an index's
// order, in a transaction of its own after inIndexOrder.
func execInIndexOrder(ctx context.Context, db beginner, sql string, args ...any) (pgconn.CommandTag, error) {
	tx, err := db.Begin(ctx)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	defer rollback(tx)
	b := &pgx.Batch{}
	b.Queue(inIndexOrder)
	b.Queue(sql, args...)
	br := tx.SendBatch(ctx, b)
	_, err = br.Exec()
	var tag pgconn.CommandTag
	if err == nil {
		tag, err = br.Exec()
	}
	if closeErr := br.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	return tag, tx.Commit(ctx)
}

// rollback ends tx. The context that broke the transaction may be done, so
// it rolls back on a fresh, bounded one. An error means the connection is
// gone, and the server has rolled back by itself.
func rollback(tx pgx.Tx) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = tx.Rollback(ctx)
}

// savepointError is the failure of the statement a savepoint guarded; the
// transaction is still usable.
type savepointError struct{ err error }

func (e *savepointError) Error() string { return e.err.Error() }
func (e *savepointError) Unwrap() error { return e.err }

// savepoint runs one statement in a savepoint, in one round trip when it
// succeeds. Its failure is a *savepointError and leaves tx usable; any
// other error means tx is lost.
func savepoint(ctx context.Context, tx pgx.Tx, sql string, args ...any) error {
	b := &pgx.Batch{}
	b.Queue("SAVEPOINT inbox_step")
	b.Queue(sql, args...)
	b.Queue("RELEASE SAVEPOINT inbox_step")
	err := tx.SendBatch(ctx, b).Close()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return err
	}
	if _, rerr := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT inbox_step"); rerr != nil {
		return errors.Join(err, rerr)
	}
	return &savepointError{err: err}
}

// maxErrorBytes bounds a stored error (panic stacks can be long).
const maxErrorBytes = 8 << 10

// errorText is err as a message row's last_error: bounded, and storable.
func errorText(err error) string {
	s := err.Error()
	if len(s) > maxErrorBytes {
		s = s[:maxErrorBytes] + "…"
	}
	return toValidText(s)
}

// validText reports whether s is storable in a text column as it is:
// valid UTF-8, no NUL.
func validText(s string) bool { return utf8.ValidString(s) && !strings.ContainsRune(s, 0) }

// toValidText makes s storable in a text column: valid UTF-8, no NUL.
func toValidText(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}
