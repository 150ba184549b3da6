package inbox

import (
	"context"
	"sort"

	"github.com/jackc/pgx/v5"
)

// Stream heads. A stream claim must not read message backlogs: a parked
// stream, one waiting on a gap or on a retry, or one another worker holds,
// may have any number of pending messages. So what a claim needs to know
// of each stream is kept in inbox_stream_heads (see migration 008): whether
// and when the message at its watermark is due, with that message's topic.
// Claims and the gap sweep read that table's small partial indexes only.
//
// The row may say ready too early, never too late:
//
//   - Store upserts the row of every stream it stores a pending message
//     of. The upsert acts on the newest committed version of the row, whose
//     next_seq is the stream's newest watermark, so an arrival at or below
//     it makes the stream ready. When the upsert creates the row, Store
//     also makes the stream's inbox_streams row: a stream has both rows or
//     neither (expiry.go).
//   - Whatever changes a stream's watermark, park state or head message (a
//     worker's settle, the gap sweep, an operator, a broken attempt) then
//     rewrites the row from the messages, in two statements: one that locks
//     the row, waiting for a Store that holds it to commit, and one, with a
//     fresh snapshot that therefore sees that Store's messages, that
//     rewrites it. A Store that comes later waits for that rewrite to commit
//     and judges its arrivals against the new watermark.
//   - A claim that finds nothing to run (the row was early) rewrites the
//     row as any settle does.
//
// The statements are in sql_heads.go.

// streamKey names a stream.
type streamKey struct{ source, stream string }

// queueRefresh queues, on b, the rewrite of the heads of keys: their lock,
// then the rewrite in a statement of its own.
func (e *engine) queueRefresh(b *pgx.Batch, keys []streamKey) {
	e.queueHeads(b, keys, false)
}

// queueHeads is queueRefresh that, with restore, first makes the streams
// of keys again if they have no rows (see restoreStreams in sql_heads.go).
func (e *engine) queueHeads(b *pgx.Batch, keys []streamKey, restore bool) {
	if len(keys) == 0 {
		return
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].source != keys[j].source {
			return keys[i].source < keys[j].source
		}
		return keys[i].stream < keys[j].stream
	})
	sources, streams := make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		sources[i], streams[i] = k.source, k.stream
	}
	b.Queue(e.sql.lockHeads, sources, streams)
	if restore {
		b.Queue(e.sql.restoreStreams, sources, streams, *e.cfg.FirstSeq)
	}
	// Until the transaction ends, which follows soon in every caller.
	b.Queue(customPlans)
	b.Queue(e.sql.refreshHeads, sources, streams)
}

// refreshHeads rewrites the heads of keys in tx.
func (e *engine) refreshHeads(ctx context.Context, tx pgx.Tx, keys ...streamKey) error {
	return e.rewriteHeads(ctx, tx, keys, false)
}

// rewriteHeads is refreshHeads, or with restore, queueHeads' restore.
func (e *engine) rewriteHeads(ctx context.Context, tx pgx.Tx, keys []streamKey, restore bool) error {
	b := &pgx.Batch{}
	e.queueHeads(b, keys, restore)
	if b.Len() == 0 {
		return nil
	}
	return tx.SendBatch(ctx, b).Close()
}
