package inbox

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// Operator actions on dead messages: requeue or delete them, one by one,
// by filter, or by failure group.

// RetryOption changes how RetryDeadMessages and RetryDeadMessage requeue.
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

// RetryDeadMessages puts the dead messages matching f (State is ignored) back to
// pending with a fresh attempt count, and unparks the streams they parked.
// It returns how many it requeued.
//
// An ordered message whose sequence number is below its stream's watermark
// (its stream was skipped past it, or it arrived late for a skipped
// sequence) would never run: by default it stays dead, the others are still
// requeued, and the error is a *BelowWatermarkError listing it (it matches
// ErrBelowWatermark). With OutOfOrder it is requeued to run out of order.
func (in *Inbox) RetryDeadMessages(ctx context.Context, f MessageFilter, opts ...RetryOption) (int, error) {
	var o retryOptions
	for _, opt := range opts {
		opt(&o)
	}
	var refused []BelowWatermark
	n, err := in.e.onDead(ctx, f, func(ctx context.Context, tx pgx.Tx, ids []int64) (int, error) {
		var err error
		ids, refused, err = in.e.requeue(ctx, tx, ids, o.outOfOrder)
		return len(ids), err
	})
	if err == nil && len(refused) > 0 {
		err = &BelowWatermarkError{Messages: refused}
	}
	return n, err
}

// RetryDeadMessage requeues one dead message by row ID (see RetryDeadMessages).
func (in *Inbox) RetryDeadMessage(ctx context.Context, rowID int64, opts ...RetryOption) error {
	n, err := in.RetryDeadMessages(ctx, MessageFilter{RowIDs: []int64{rowID}}, opts...)
	if err == nil && n == 0 {
		return fmt.Errorf("inbox: dead message %d: %w", rowID, ErrNotFound)
	}
	return err
}

// DeleteDeadMessages deletes the dead messages matching f (State is ignored). A
// stream parked on one of them stays parked until skipped.
func (in *Inbox) DeleteDeadMessages(ctx context.Context, f MessageFilter) (int, error) {
	return in.e.onDead(ctx, f, func(ctx context.Context, tx pgx.Tx, ids []int64) (int, error) {
		_, err := tx.Exec(ctx, in.e.sql.deleteMessages, ids)
		return len(ids), err
	})
}

// requeue makes the dead messages ids pending again and returns the ones it
// requeued, and the ones it refused because they are below their stream's
// watermark (none with outOfOrder: those are marked to run out of order).
func (e *engine) requeue(ctx context.Context, tx pgx.Tx, ids []int64, outOfOrder bool) (requeued []int64, refused []BelowWatermark, err error) {
	rows, err := tx.Query(ctx, e.sql.belowWatermark, ids)
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
	if _, err := tx.Exec(ctx, e.sql.unparkByMessage, requeued); err != nil {
		return nil, nil, err
	}
	rows, err = tx.Query(ctx, e.sql.requeueDead, requeued, belowIDs)
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
	if err := e.rewriteHeads(ctx, tx, keys, true); err != nil {
		return nil, nil, fmt.Errorf("rewrite stream heads: %w", err)
	}
	if len(belowIDs) > 0 {
		e.log.warn("inbox: dead messages requeued to run out of order, below their stream's watermark", "row_ids", belowIDs)
	}
	return requeued, refused, nil
}

// onDead locks the dead messages matching f and applies fn to them in one
// transaction, then wakes the workers. fn returns how many it changed.
func (e *engine) onDead(ctx context.Context, f MessageFilter, fn func(context.Context, pgx.Tx, []int64) (int, error)) (int, error) {
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("inbox: begin: %w", err)
	}
	defer rollback(tx)
	f.State = StateDead
	var limit any // none
	if f.Limit > 0 {
		limit = f.Limit
	}
	rows, err := tx.Query(ctx, e.sql.lockDead, append(f.args(), limit)...)
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
		e.wake.signal()
	}
	return n, nil
}

// Dead messages grouped by failure, for dashboards: messages that died of
// the same error, up to the numbers and IDs in its text, share a
// fingerprint, and can be listed, retried or deleted together.

// DeadGroupScan caps how many dead messages DeadGroups examines (the newest
// ones matching the query), so that it answers quickly however many there
// are. DeadGroups.Capped says when the cap was reached.
const DeadGroupScan = 20_000

// deadGroupBatch is how many dead messages a group action changes per
// transaction: one short transaction per batch, not one long one.
const deadGroupBatch = 500

// DeadGroup is the dead messages that failed with the same error pattern.
type DeadGroup struct {
	// Fingerprint identifies the group; pass it in DeadQuery.Fingerprint.
	Fingerprint string
	// Pattern is the error text with UUIDs, hex IDs and numbers masked.
	Pattern string
	// Count counts the group's messages among those examined.
	Count int64
	// Topics lists the group's topics, in name order (at most 10).
	Topics []string
	// NewestRowID is the group's newest message, an example of it.
	NewestRowID int64
	// FirstReceived and LastReceived span when its messages arrived.
	FirstReceived, LastReceived time.Time
}

// DeadGroups is the answer of Inbox.DeadGroups.
type DeadGroups struct {
	Groups []DeadGroup
	// Scanned counts the dead messages examined. Capped is true when it
	// reached DeadGroupScan: older matching messages were not examined,
	// and the counts are lower bounds.
	Scanned int64
	Capped  bool
}

// DeadGroups groups the newest dead messages matching q (at most
// DeadGroupScan) by fingerprint, largest group first, at most q.Limit
// groups.
func (in *Inbox) DeadGroups(ctx context.Context, q DeadQuery) (DeadGroups, error) {
	q.BeforeRowID = 0
	rows, err := in.e.pool.Query(ctx, in.e.sql.deadGroups, append(q.args(), DeadGroupScan, q.limit())...)
	if err != nil {
		return DeadGroups{}, fmt.Errorf("inbox: dead groups: %w", err)
	}
	var out DeadGroups
	var g DeadGroup
	_, err = pgx.ForEachRow(rows, []any{&g.Fingerprint, &g.Pattern, &g.Count, &g.NewestRowID,
		&g.FirstReceived, &g.LastReceived, &g.Topics, &out.Scanned}, func() error {
		out.Groups = append(out.Groups, g)
		return nil
	})
	if err != nil {
		return DeadGroups{}, fmt.Errorf("inbox: dead groups: %w", err)
	}
	out.Capped = out.Scanned >= DeadGroupScan
	return out, nil
}

// ListDead returns dead messages matching q, newest first, at most q.Limit;
// page on with q.BeforeRowID.
func (in *Inbox) ListDead(ctx context.Context, q DeadQuery) ([]MessageInfo, error) {
	rows, err := in.e.pool.Query(ctx, in.e.sql.listDead, append(q.args(), q.limit())...)
	if err != nil {
		return nil, fmt.Errorf("inbox: list dead messages: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("inbox: list dead messages: %w", err)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	list, err := in.ListMessages(ctx, MessageFilter{State: StateDead, RowIDs: ids, Limit: len(ids)})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(list, func(a, b MessageInfo) int { return cmp.Compare(b.RowID, a.RowID) })
	return list, nil
}

// RetryDeadGroup requeues every dead message matching q (as RetryDeadMessages
// does), in batches, and returns how many it requeued.
func (in *Inbox) RetryDeadGroup(ctx context.Context, q DeadQuery) (int, error) {
	return in.eachDeadBatch(ctx, q, func(ids []int64) (int, error) {
		return in.RetryDeadMessages(ctx, MessageFilter{RowIDs: ids})
	})
}

// DeleteDeadGroup deletes every dead message matching q (as DeleteDeadMessages
// does), in batches, and returns how many it deleted.
func (in *Inbox) DeleteDeadGroup(ctx context.Context, q DeadQuery) (int, error) {
	return in.eachDeadBatch(ctx, q, func(ids []int64) (int, error) {
		return in.DeleteDeadMessages(ctx, MessageFilter{RowIDs: ids})
	})
}

// eachDeadBatch walks the dead messages matching q by row ID, oldest
// first, and applies fn to each batch.
func (in *Inbox) eachDeadBatch(ctx context.Context, q DeadQuery, fn func([]int64) (int, error)) (int, error) {
	q.BeforeRowID = 0
	args := q.args()
	var total int
	var after int64
	for {
		rows, err := in.e.pool.Query(ctx, in.e.sql.deadBatch, append(args, after, deadGroupBatch)...)
		if err != nil {
			return total, fmt.Errorf("inbox: select dead group: %w", err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return total, fmt.Errorf("inbox: select dead group: %w", err)
		}
		if len(ids) == 0 {
			return total, nil
		}
		n, err := fn(ids)
		total += n
		if err != nil {
			return total, err
		}
		after = ids[len(ids)-1]
	}
}
