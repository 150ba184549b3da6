package inbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// The relay's side of the Outbox: a relay (package amqp's Relay, or one of
// your own for another broker) claims pending messages, publishes them and
// settles the claim with what the broker said.

// OutboxMessage is a claimed outgoing message, ready to publish.
type OutboxMessage struct {
	RowID       int64
	ID          string
	Exchange    string
	RoutingKey  string
	Type        string
	ContentType string
	Stream      string // "" when unordered
	Seq         int64  // the position in Stream
	Headers     map[string]string
	Body        []byte
	Attempt     int // 1-based number of this publish attempt
	CreatedAt   time.Time
}

// OutboxClaim holds claimed messages: row locks in a transaction of its own,
// so no other relay publishes them meanwhile, and a relay that dies releases
// them with its connection. Settle it, or Release it.
type OutboxClaim struct {
	ob       *Outbox
	tx       pgx.Tx
	Messages []OutboxMessage
	done     bool
}

// OutboxFailure is a message the broker did not take.
type OutboxFailure struct {
	RowID int64
	Err   error
	// Dead gives up at once (unroutable, refused for good); otherwise the
	// message is retried after a backoff, and dead after
	// OutboxConfig.MaxAttempts.
	Dead bool
}

// Claim locks up to limit publishable messages: unordered ones, and of each
// stream only the first unsent one. It returns a claim with no messages when
// there is nothing to do (Release is then optional).
func (o *Outbox) Claim(ctx context.Context, limit int) (*OutboxClaim, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("inbox: outbox claim limit %d must be positive", limit)
	}
	tx, err := o.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("inbox: begin outbox claim: %w", err)
	}
	b := &pgx.Batch{}
	b.Queue(inIndexOrder) // see db.go
	b.Queue(o.sql.claim, limit)
	br := tx.SendBatch(ctx, b)
	_, err = br.Exec()
	var msgs []OutboxMessage
	if err == nil {
		var rows pgx.Rows
		rows, err = br.Query()
		msgs, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (OutboxMessage, error) {
			var m OutboxMessage
			err := row.Scan(&m.RowID, &m.ID, &m.Exchange, &m.RoutingKey, &m.Type, &m.ContentType, &m.Stream, &m.Seq,
				&m.Headers, &m.Body, &m.Attempt, &m.CreatedAt)
			m.Attempt++
			return m, err
		})
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		rollback(tx)
		return nil, fmt.Errorf("inbox: claim outgoing messages: %w", err)
	}
	c := &OutboxClaim{ob: o, tx: tx, Messages: msgs}
	if len(msgs) == 0 {
		c.Release()
	}
	return c, nil
}

// Settle records the outcome and releases the claim: sent messages are
// marked sent, failures retried or dead; messages in neither list stay
// pending, unchanged, for the next claim (publish them again: their fate is
// unknown). It fails if the claim's transaction was lost; then nothing is
// recorded and every message stays pending.
func (c *OutboxClaim) Settle(ctx context.Context, sent []int64, failed []OutboxFailure) error {
	if c.done {
		return errors.New("inbox: outbox claim already settled or released")
	}
	defer c.Release()
	o := c.ob
	attempt := make(map[int64]int, len(c.Messages))
	for _, m := range c.Messages {
		attempt[m.RowID] = m.Attempt
	}
	b := &pgx.Batch{}
	if len(sent) > 0 {
		b.Queue(o.sql.markSent, sent)
	}
	dead := 0
	for _, f := range failed {
		state, delay := OutboxPending, o.cfg.retryDelay(attempt[f.RowID])
		if f.Dead || attempt[f.RowID] >= o.cfg.MaxAttempts {
			state, delay = OutboxDead, 0
			dead++
		}
		b.Queue(o.sql.markFailed, f.RowID, errorText(f.Err), state, delay.Seconds())
	}
	if b.Len() > 0 {
		if err := c.tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("inbox: record outcome of %d outgoing messages: %w", len(sent)+len(failed), err)
		}
	}
	if err := c.tx.Commit(ctx); err != nil {
		return fmt.Errorf("inbox: commit outcome of %d outgoing messages: %w", len(sent)+len(failed), err)
	}
	c.done = true
	o.tel.settled(len(sent), len(failed)-dead, dead)
	for _, f := range failed {
		o.log.warn("outbox: broker did not take message", "row_id", f.RowID, "attempt", attempt[f.RowID], "dead", f.Dead || attempt[f.RowID] >= o.cfg.MaxAttempts, "error", firstLine(f.Err))
	}
	return nil
}

// Release gives the claimed messages back untouched. It is safe to call
// after Settle, and more than once.
func (c *OutboxClaim) Release() {
	if c.done {
		return
	}
	c.done = true
	rollback(c.tx)
}

// Wakeup receives a value when messages were enqueued through this Outbox
// (in this process); Listen adds those of other processes. A relay waits on
// it, with polling as the backstop.
func (o *Outbox) Wakeup() <-chan struct{} { return o.wake.c }

// Listen wakes relays on the NOTIFY that Enqueue sends at commit, from any
// process, until ctx ends. It holds a dedicated connection outside the pool
// and reconnects with backoff; notifications sent while it is down are lost,
// which polling covers.
func (o *Outbox) Listen(ctx context.Context) {
	listener{
		name: "outbox listener", pool: o.pool, listen: o.sql.listen, wake: o.wake, log: o.log,
		// Anything committed before LISTEN took effect is found by the
		// claim this wakes.
		listening: func(uint32) { o.wake.signal() },
	}.run(ctx)
}

// CleanupSent deletes sent messages older than OutboxConfig.Retention, in
// batches of OutboxConfig.CleanupBatch, and returns how many it deleted.
// Several relays may run it at once.
func (o *Outbox) CleanupSent(ctx context.Context) (int64, error) {
	var total int64
	for {
		tag, err := execInIndexOrder(ctx, o.pool, o.sql.cleanup, o.cfg.Retention.Seconds(), o.cfg.CleanupBatch)
		if err != nil {
			return total, fmt.Errorf("inbox: delete sent outgoing messages past retention: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < int64(o.cfg.CleanupBatch) || ctx.Err() != nil {
			return total, nil
		}
	}
}

// CheckSchema returns an error wrapping ErrNotMigrated if the schema has no
// outbox tables.
func (o *Outbox) CheckSchema(ctx context.Context) error {
	ok, err := exist(ctx, o.pool, o.cfg.Schema, "outbox_messages", "outbox_streams")
	if err != nil {
		return fmt.Errorf("inbox: check schema %s: %w", o.cfg.Schema, err)
	}
	if !ok {
		return fmt.Errorf("%w: schema %s has no outbox tables: run migrations.Up first", ErrNotMigrated, o.cfg.Schema)
	}
	return nil
}
