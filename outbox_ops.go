package inbox

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// OutboxState is where an outgoing message stands.
type OutboxState string

// The states of an outgoing message.
const (
	// OutboxPending messages wait for a relay: due, in flight, or waiting
	// for a retry or for an earlier message of their stream.
	OutboxPending OutboxState = "pending"
	// OutboxSent messages were confirmed by the broker; they are kept,
	// without their body, for OutboxConfig.Retention.
	OutboxSent OutboxState = "sent"
	// OutboxDead messages were given up on, and wait for an operator.
	OutboxDead OutboxState = "dead"
)

// OutboxStats is a snapshot of an outbox. Counts stop at StatsCountLimit.
type OutboxStats struct {
	// TakenAt is the database's clock when the snapshot was taken.
	TakenAt time.Time
	// Pending counts messages not yet sent: due, in flight, or waiting for
	// a retry or for an earlier message of their stream.
	Pending int64
	// OldestPending is the age of the oldest pending message, or 0.
	OldestPending time.Duration
	// SentLastMinute counts messages confirmed by the broker in the last
	// minute.
	SentLastMinute int64
	// Dead counts messages given up on, kept until retried or deleted.
	Dead int64
}

// Stats reads the outbox's figures in one statement, from index ranges.
func (o *Outbox) Stats(ctx context.Context) (OutboxStats, error) {
	var s OutboxStats
	err := o.pool.QueryRow(ctx, o.sql.stats, StatsCountLimit).
		Scan(&s.TakenAt, &s.Pending, &s.OldestPending, &s.SentLastMinute, &s.Dead)
	if err != nil {
		return OutboxStats{}, fmt.Errorf("inbox: outbox stats: %w", err)
	}
	s.OldestPending = max(s.OldestPending, 0)
	return s, nil
}

// OutboxInfo describes one outgoing message, for operators. The body is not
// included.
type OutboxInfo struct {
	RowID       int64
	ID          string
	Destination string
	Exchange    string
	RoutingKey  string
	Type        string
	Stream      string
	Seq         int64
	State       OutboxState
	Attempts    int
	LastError   string
	Headers     map[string]string
	BodyBytes   int
	CreatedAt   time.Time
	RunAt       time.Time
	SentAt      *time.Time
}

// OutboxFilter selects outgoing messages. Zero fields match everything.
type OutboxFilter struct {
	State OutboxState
	// AfterRowID matches only rows with a larger row ID, for paging.
	AfterRowID int64
	// RowIDs, when not nil, matches only these rows.
	RowIDs []int64
	Limit  int // defaults to 100
}

// ListMessages returns the outgoing messages matching f, oldest first.
func (o *Outbox) ListMessages(ctx context.Context, f OutboxFilter) ([]OutboxInfo, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	rows, err := o.pool.Query(ctx, o.sql.list, f.State, f.AfterRowID, f.RowIDs, limit)
	if err != nil {
		return nil, fmt.Errorf("inbox: list outbox: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (OutboxInfo, error) {
		var m OutboxInfo
		err := row.Scan(&m.RowID, &m.ID, &m.Destination, &m.Exchange, &m.RoutingKey, &m.Type, &m.Stream, &m.Seq,
			&m.State, &m.Attempts, &m.LastError, &m.Headers, &m.BodyBytes, &m.CreatedAt, &m.RunAt, &m.SentAt)
		return m, err
	})
	if err != nil {
		return nil, fmt.Errorf("inbox: list outbox: %w", err)
	}
	return out, nil
}

// RetryDeadMessages puts the dead outgoing messages matching f (State is
// ignored) back to pending with a fresh attempt count, and returns how
// many. Their streams go on from them.
func (o *Outbox) RetryDeadMessages(ctx context.Context, f OutboxFilter) (int, error) {
	n, err := o.onDead(ctx, f, o.sql.retryDead)
	if err == nil && n > 0 {
		o.wake.signal()
	}
	return n, err
}

// DeleteDeadMessages deletes the dead outgoing messages matching f (State
// is ignored) and returns how many. A stream held back by one goes on
// without it: a downstream inbox sees a gap there.
func (o *Outbox) DeleteDeadMessages(ctx context.Context, f OutboxFilter) (int, error) {
	n, err := o.onDead(ctx, f, o.sql.deleteDead)
	if err == nil && n > 0 {
		o.wake.signal()
	}
	return n, err
}

func (o *Outbox) onDead(ctx context.Context, f OutboxFilter, change string) (int, error) {
	var n int
	err := pgx.BeginFunc(ctx, o.pool, func(tx pgx.Tx) error {
		var limit any // NULL: no limit
		if f.Limit > 0 {
			limit = f.Limit
		}
		rows, err := tx.Query(ctx, o.sql.lockDead, f.AfterRowID, f.RowIDs, limit)
		if err != nil {
			return fmt.Errorf("select dead outgoing messages: %w", err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return fmt.Errorf("select dead outgoing messages: %w", err)
		}
		if len(ids) == 0 {
			return nil
		}
		if _, err := tx.Exec(ctx, change, ids); err != nil {
			return fmt.Errorf("change %d dead outgoing messages: %w", len(ids), err)
		}
		n = len(ids)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("inbox: %w", err)
	}
	return n, nil
}
