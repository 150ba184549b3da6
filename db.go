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

// batcher sends a batch of statements in one round trip on a pool,
// connection or transaction.
type batcher interface {
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// beginner starts a transaction on a pool or a connection.
type beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// inIndexOrder makes the statement that follows it, in the same
// transaction, walk an index in order and stop at its limit. When a table's
// statistics lag behind a burst of rows (a new table, a backlog grown since
// the last ANALYZE), the planner expects fewer matching rows than the limit,
// so it reads them all and sorts them: every batch then costs the whole
// backlog (25 ms for 20,000 rows, against 1 ms, for the relay's claim).
// Without a sort there is no such plan. Nor JIT: where a sort is still
// needed, it carries the planner's penalty for a sort, far above
// jit_above_cost, and compiling took seconds a statement. Only for
// statements where an index gives every order they need: elsewhere the
// planner would walk a whole index in its order to spare a sort of a few
// rows (a head refresh did, 660 ms a stream).
const inIndexOrder = `SELECT set_config('enable_sort', 'off', true), set_config('jit', 'off', true)`

// customPlans makes the statements that follow it, in the same
// transaction, be planned on every run, with their arguments and the
// tables as they are then, even when pgx runs them as prepared statements:
// PostgreSQL keeps a generic plan for those after five runs, and one made
// while a queue was quiet scanned inbox_messages for a stream's few rows
// (a head refresh read 24,000 rows to rewrite one stream's head). For the
// statements that run once per claim at most, where planning is cheap
// beside that risk.
const customPlans = `SELECT set_config('plan_cache_mode', 'force_custom_plan', true)`

// claimPlanning is inIndexOrder, and no sequential scans, for the claims,
// in a transaction the handlers share: it keeps the session's settings,
// which handlerPlanning puts back before the handlers run, so that their
// statements are planned as the application configured. A generic plan (a
// prepared statement's, after five runs), made while a queue was quiet,
// guesses few due rows and few attempt starts: it read and sorted every due
// message in each claim (580 ms a claim in a soak, sorting on disk, and a
// backlog that then only grew), or scanned the attempt starts once for
// each due message (see started in sql_worker.go). The claims find every
// row by an index, so no sequential scan is ever right for them.
//
// The claims are still planned on every run (PostgreSQL's choice: their
// LIMIT $1 makes the generic plan look dearer), 0.2 ms each. Forced to
// their generic plans they spared that but ran slower beside a backlog:
// 1,000,000 pending rows at 0.79x the 20k rate against 0.98x, 100,000
// blocked rows at 0.83x the clean rate against 0.98x (bench, one run each).
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

// Store, StoreTx and Outbox.Enqueue may be called once per message. Their
// statements read their input through unnest, which the planner sizes by
// the array's length when it plans for a call's values and at 100 rows when
// it plans generically, so for a few messages the plan for the values always
// looked cheaper and PostgreSQL planned the statement afresh on every call
// (0.22 ms of the server's time for Enqueue's, which ran in 0.09 ms). Read by
// subscript instead (generate_subscripts), they are sized alike in both
// plans but cost time quadratic in the batch (15 s for 10,000 messages).
// So they run after genericPlanOn, in the same round trip, with their
// generic plan, made once per connection, and genericPlanOff puts the
// caller's setting back. Those generic plans probe the tables by key
// however they grow (plans_test.go).
const (
	genericPlanOn = `SELECT set_config('plan_cache_mode', 'force_generic_plan', true)
FROM (SELECT set_config('inbox.caller_plan_cache_mode', current_setting('plan_cache_mode'), true)) saved`
	genericPlanOff = `SELECT set_config('plan_cache_mode', current_setting('inbox.caller_plan_cache_mode'), true)`
)

// queryGeneric runs sql with its generic plan (see genericPlanOn) and calls
// each for every row it returns, with dest scanned. On a pool the three
// statements share one implicit transaction, which the settings last for.
func queryGeneric(ctx context.Context, db batcher, sql string, args []any, dest []any, each func() error) error {
	b := &pgx.Batch{}
	b.Queue(genericPlanOn)
	b.Queue(sql, args...)
	b.Queue(genericPlanOff)
	br := db.SendBatch(ctx, b)
	_, err := br.Exec()
	if err == nil {
		var rows pgx.Rows
		if rows, err = br.Query(); err == nil {
			_, err = pgx.ForEachRow(rows, dest, each)
		}
	}
	if err == nil {
		_, err = br.Exec()
	}
	if closeErr := br.Close(); err == nil {
		err = closeErr
	}
	return err
}

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
