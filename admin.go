package inbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Operations on dead messages and streams, for tools and for code. They
// work on a stopped Inbox too.

// ErrNotFound is returned when the message or stream an operation names does
// not exist, or is not in a state the operation applies to.
var ErrNotFound = errors.New("inbox: not found")

// MessageInfo describes one stored message, for operators. Body is not
// included; see Message for that.
type MessageInfo struct {
	RowID       int64
	Source      string
	ID          string
	Topic       string
	Stream      string
	Seq         int64
	State       string
	Attempts    int
	LastError   string
	Headers     map[string]string
	BodyBytes   int
	ReceivedAt  time.Time
	RunAt       time.Time
	ProcessedAt *time.Time
	// OutOfOrder is set when an operator requeued the message to run below
	// its stream's watermark (RetryDead with OutOfOrder).
	OutOfOrder bool
}

// MessageFilter selects messages. Zero fields match everything.
type MessageFilter struct {
	State         string // "pending", "done" or "dead"
	Topic         string
	ErrorContains string // case-insensitive substring of the last error
	Since, Until  time.Time
	// AfterRowID matches only rows with a larger row ID: to page through a
	// long list, pass the last RowID of the previous page.
	AfterRowID int64
	// RowIDs, when not nil, matches only these rows (none, when empty).
	RowIDs []int64
	Limit  int // defaults to 100
}

const messageColumns = `id, source, message_id, topic, coalesce(stream, ''), coalesce(seq, 0), state, attempts,
	coalesce(last_error, ''), headers, coalesce(length(body), 0), received_at, run_at, processed_at, out_of_order`

func scanMessageInfo(row pgx.CollectableRow) (MessageInfo, error) {
	var m MessageInfo
	err := row.Scan(&m.RowID, &m.Source, &m.ID, &m.Topic, &m.Stream, &m.Seq, &m.State, &m.Attempts,
		&m.LastError, &m.Headers, &m.BodyBytes, &m.ReceivedAt, &m.RunAt, &m.ProcessedAt, &m.OutOfOrder)
	return m, err
}

// where renders the filter as SQL conditions on bound arguments.
func (f MessageFilter) where() (string, []any) {
	return `($1 = '' OR state = $1) AND ($2 = '' OR topic = $2)
		AND ($3 = '' OR strpos(lower(coalesce(last_error, '')), lower($3)) > 0)
		AND ($4::timestamptz IS NULL OR received_at >= $4) AND ($5::timestamptz IS NULL OR received_at < $5)
		AND ($6::bigint = 0 OR id > $6) AND ($7::bigint[] IS NULL OR id = ANY($7))`,
		[]any{f.State, f.Topic, f.ErrorContains, nullIfZero(f.Since), nullIfZero(f.Until), f.AfterRowID, f.RowIDs}
}

// nullIfZero makes an unset time a SQL NULL.
func nullIfZero(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func (f MessageFilter) limit() int {
	if f.Limit <= 0 {
		return 100
	}
	return f.Limit
}

// ListMessages returns messages matching f, oldest first.
func (in *Inbox) ListMessages(ctx context.Context, f MessageFilter) ([]MessageInfo, error) {
	where, args := f.where()
	rows, err := in.pool.Query(ctx, `SELECT `+messageColumns+` FROM `+in.table("inbox_messages")+
		` WHERE `+where+` ORDER BY id LIMIT $8`, append(args, f.limit())...)
	if err != nil {
		return nil, fmt.Errorf("inbox: list messages: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanMessageInfo)
	if err != nil {
		return nil, fmt.Errorf("inbox: list messages: %w", err)
	}
	return out, nil
}

// GetMessage returns one message by its row ID.
func (in *Inbox) GetMessage(ctx context.Context, rowID int64) (MessageInfo, error) {
	rows, err := in.pool.Query(ctx, `SELECT `+messageColumns+` FROM `+in.table("inbox_messages")+` WHERE id = $1`, rowID)
	if err != nil {
		return MessageInfo{}, fmt.Errorf("inbox: get message %d: %w", rowID, err)
	}
	m, err := pgx.CollectExactlyOneRow(rows, scanMessageInfo)
	if errors.Is(err, pgx.ErrNoRows) {
		return MessageInfo{}, fmt.Errorf("inbox: message %d: %w", rowID, ErrNotFound)
	}
	if err != nil {
		return MessageInfo{}, fmt.Errorf("inbox: get message %d: %w", rowID, err)
	}
	return m, nil
}

// RetryOption changes how RetryDead and RetryMessage requeue.
type RetryOption func(*retryOptions)

type retryOptions struct{ outOfOrder bool }

// OutOfOrder requeues dead messages below their stream's watermark too:
// each runs once more, its handler called despite the stream having moved
// past its sequence number, and the watermark does not move. The message
// row keeps the mark (MessageInfo.OutOfOrder). Use it when the handler
// copes with the message applied late, after its successors.
func OutOfOrder() RetryOption {
	return func(o *retryOptions) { o.outOfOrder = true }
}

// RetryDead puts the dead messages matching f (State is ignored) back to
// pending with a fresh attempt count, and unparks the streams they parked.
// It returns how many it requeued.
//
// An ordered message whose sequence number is below its stream's watermark
// (its stream was skipped past it, or it arrived late for a skipped
// sequence) would never run: by default it stays dead, the others are still
// requeued, and the error is a *BelowWatermarkError listing it (it matches
// ErrBelowWatermark). With OutOfOrder it is requeued to run out of order.
func (in *Inbox) RetryDead(ctx context.Context, f MessageFilter, opts ...RetryOption) (int, error) {
	var o retryOptions
	for _, opt := range opts {
		opt(&o)
	}
	var refused []BelowWatermark
	n, err := in.onDead(ctx, f, func(ctx context.Context, tx pgx.Tx, ids []int64) (int, error) {
		var err error
		ids, refused, err = in.requeue(ctx, tx, ids, o.outOfOrder)
		return len(ids), err
	})
	if err == nil && len(refused) > 0 {
		err = &BelowWatermarkError{Messages: refused}
	}
	return n, err
}

// RetryMessage requeues one dead message by row ID (see RetryDead).
func (in *Inbox) RetryMessage(ctx context.Context, rowID int64, opts ...RetryOption) error {
	n, err := in.RetryDead(ctx, MessageFilter{RowIDs: []int64{rowID}}, opts...)
	if err == nil && n == 0 {
		return fmt.Errorf("inbox: dead message %d: %w", rowID, ErrNotFound)
	}
	return err
}

// DeleteDead deletes the dead messages matching f (State is ignored). A
// stream parked on one of them stays parked until skipped.
func (in *Inbox) DeleteDead(ctx context.Context, f MessageFilter) (int, error) {
	return in.onDead(ctx, f, func(ctx context.Context, tx pgx.Tx, ids []int64) (int, error) {
		_, err := tx.Exec(ctx, `DELETE FROM `+in.table("inbox_messages")+` WHERE id = ANY($1)`, ids)
		return len(ids), err
	})
}

// requeue makes the dead messages ids pending again and returns the ones it
// requeued, and the ones it refused because they are below their stream's
// watermark (none with outOfOrder: those are marked to run out of order).
func (in *Inbox) requeue(ctx context.Context, tx pgx.Tx, ids []int64, outOfOrder bool) (requeued []int64, refused []BelowWatermark, err error) {
	rows, err := tx.Query(ctx, `SELECT m.id, m.source, m.stream, m.seq, s.next_seq
		FROM `+in.table("inbox_messages")+` m
		JOIN `+in.table("inbox_streams")+` s ON s.source = m.source AND s.stream = m.stream
		WHERE m.id = ANY($1) AND m.seq < s.next_seq
		ORDER BY m.id`, ids)
	if err != nil {
		return nil, nil, err
	}
	below, err := pgx.CollectRows(rows, pgx.RowToStructByPos[BelowWatermark])
	if err != nil {
		return nil, nil, err
	}
	isBelow := make(map[int64]bool, len(below))
	belowIDs := make([]int64, 0, len(below))
	for _, b := range below {
		isBelow[b.RowID] = true
		belowIDs = append(belowIDs, b.RowID)
	}
	if outOfOrder {
		requeued = ids
	} else {
		refused, belowIDs = below, []int64{}
		for _, id := range ids {
			if !isBelow[id] {
				requeued = append(requeued, id)
			}
		}
	}
	if len(requeued) == 0 {
		return nil, refused, nil
	}
	if _, err := tx.Exec(ctx, `UPDATE `+in.table("inbox_streams")+`
		SET parked_at = NULL, parked_reason = NULL, parked_message_id = NULL, updated_at = now()
		WHERE parked_message_id = ANY($1)`, requeued); err != nil {
		return nil, nil, err
	}
	// The out-of-order mark stays on the row once it is handled: the record
	// that it ran behind its stream's watermark.
	rows, err = tx.Query(ctx, `UPDATE `+in.table("inbox_messages")+`
		SET state = 'pending', attempts = 0, run_at = now(), out_of_order = out_of_order OR id = ANY($2)
		WHERE id = ANY($1)
		RETURNING source, coalesce(stream, '')`, requeued, belowIDs)
	if err != nil {
		return nil, nil, err
	}
	var keys []streamKey
	seen := map[streamKey]bool{}
	var k streamKey
	if _, err := pgx.ForEachRow(rows, []any{&k.source, &k.stream}, func() error {
		if k.stream != "" && !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
		return nil
	}); err != nil {
		return nil, nil, err
	}
	// A stream expired since (expiry.go) starts again at FirstSeq.
	if err := in.rewriteHeads(ctx, tx, keys, true); err != nil {
		return nil, nil, fmt.Errorf("rewrite stream heads: %w", err)
	}
	if len(belowIDs) > 0 {
		in.log.warn("inbox: dead messages requeued to run out of order, below their stream's watermark", "row_ids", belowIDs)
	}
	return requeued, refused, nil
}

// onDead locks the dead messages matching f and applies fn to them in one
// transaction, then wakes the workers. fn returns how many it changed.
func (in *Inbox) onDead(ctx context.Context, f MessageFilter, fn func(context.Context, pgx.Tx, []int64) (int, error)) (int, error) {
	tx, err := in.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("inbox: begin: %w", err)
	}
	defer rollback(tx)
	f.State = "dead"
	where, args := f.where()
	sql := `SELECT id FROM ` + in.table("inbox_messages") + ` WHERE ` + where + ` ORDER BY id`
	if f.Limit > 0 {
		sql += ` LIMIT $8`
		args = append(args, f.Limit)
	}
	rows, err := tx.Query(ctx, sql+` FOR UPDATE`, args...)
	if err != nil {
		return 0, fmt.Errorf("inbox: select dead messages: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return 0, fmt.Errorf("inbox: select dead messages: %w", err)
	}
	if len(ids) == 0 {
		return 0, nil
	}
	n, err := fn(ctx, tx, ids)
	if err != nil {
		return 0, fmt.Errorf("inbox: update %d dead messages: %w", len(ids), err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("inbox: commit: %w", err)
	}
	if n > 0 {
		in.wake.signal()
	}
	return n, nil
}

func (in *Inbox) table(name string) string {
	return pgx.Identifier{in.cfg.Schema, name}.Sanitize()
}
