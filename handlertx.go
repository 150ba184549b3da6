package inbox

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// handlerTx is the transaction handed to a handler. Several messages share
// one database transaction; a savepoint around each handler's writes lets a
// failing handler roll back only its own. The savepoint is opened lazily, on
// the handler's first statement, so handlers that do not write cost no
// round trip.
//
// A handler that succeeds leaves its savepoint open (held): releasing it
// would cost a round trip of its own, so the next handler that writes
// releases it in the round trip that opens its own savepoint, and the
// batch's commit takes whatever is still held. The release used to catch a
// handler that swallowed an SQL error and returned nil; the server's
// transaction status, which comes back with every statement, tells that
// without one.
type handlerTx struct {
	tx     pgx.Tx
	held   *bool // a succeeded handler's savepoint is still open; shared by a claim's handlers
	opened bool
}

const (
	savepointOpen     = "SAVEPOINT inbox_handler"
	savepointNext     = "RELEASE SAVEPOINT inbox_handler; SAVEPOINT inbox_handler"
	savepointRollback = "ROLLBACK TO SAVEPOINT inbox_handler; RELEASE SAVEPOINT inbox_handler"
)

func (h *handlerTx) ensure(ctx context.Context) error {
	if h.opened {
		return nil
	}
	sql := savepointOpen
	if *h.held {
		sql = savepointNext
	}
	if _, err := h.tx.Exec(ctx, sql); err != nil {
		return err
	}
	h.opened, *h.held = true, false
	return nil
}

// finish holds the savepoint after a successful handler, or rolls back to
// it after a failed one. An error means the transaction is unusable.
func (h *handlerTx) finish(ctx context.Context, handlerFailed bool) error {
	if !h.opened {
		return nil
	}
	h.opened = false
	if handlerFailed {
		_, err := h.tx.Exec(ctx, savepointRollback)
		return err
	}
	// 'T': in a transaction that has not failed. A statement of the
	// handler failed ('E'), or the transaction was ended under it ('I').
	if conn := h.tx.Conn(); conn.IsClosed() || conn.PgConn().TxStatus() != 'T' {
		return errors.New("the transaction failed in the handler, or was ended by it")
	}
	*h.held = true
	return nil
}

func (h *handlerTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if err := h.ensure(ctx); err != nil {
		return nil, err
	}
	return h.tx.Begin(ctx)
}

// Commit returns ErrTxOwned: the inbox commits with the done-mark.
func (h *handlerTx) Commit(context.Context) error { return ErrTxOwned }

// Rollback returns ErrTxOwned: return an error from the handler instead.
func (h *handlerTx) Rollback(context.Context) error { return ErrTxOwned }

func (h *handlerTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if err := h.ensure(ctx); err != nil {
		return 0, err
	}
	return h.tx.CopyFrom(ctx, table, columns, src)
}

func (h *handlerTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if err := h.ensure(ctx); err != nil {
		return errBatchResults{err: err, tx: h}
	}
	return h.tx.SendBatch(ctx, b)
}

func (h *handlerTx) LargeObjects() pgx.LargeObjects {
	// No error return here; if the savepoint fails, the handler's next
	// statement reports it.
	_ = h.ensure(context.Background())
	return h.tx.LargeObjects()
}

func (h *handlerTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if err := h.ensure(ctx); err != nil {
		return nil, err
	}
	return h.tx.Prepare(ctx, name, sql)
}

func (h *handlerTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := h.ensure(ctx); err != nil {
		return pgconn.CommandTag{}, err
	}
	return h.tx.Exec(ctx, sql, args...)
}

func (h *handlerTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := h.ensure(ctx); err != nil {
		return nil, err
	}
	return h.tx.Query(ctx, sql, args...)
}

func (h *handlerTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := h.ensure(ctx); err != nil {
		return errRow{err}
	}
	return h.tx.QueryRow(ctx, sql, args...)
}

func (h *handlerTx) Conn() *pgx.Conn {
	_ = h.ensure(context.Background())
	return h.tx.Conn()
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

type errBatchResults struct {
	err error
	tx  pgx.Tx
}

func (r errBatchResults) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, r.err }
func (r errBatchResults) Query() (pgx.Rows, error)         { return nil, r.err }
func (r errBatchResults) QueryRow() pgx.Row                { return errRow{r.err} }
func (r errBatchResults) Close() error                     { return r.err }
func (r errBatchResults) Tx() pgx.Tx                       { return r.tx }
