package inbox

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Idle-stream expiry. A stream's rows (inbox_streams, inbox_stream_heads,
// inbox_skips) otherwise live forever, one per stream ever seen. With
// Config.IdleStreamExpiry set, maintenance deletes the streams that have no
// pending message, are not parked, and whose watermark has not moved for
// that long.
//
// Store must never leave a pending message without its stream's rows. It
// creates a stream's rows only under the lock of its head row, which it
// takes for every pending message it stores (the store statement in
// sql_store.go), and expiry deletes a stream only while it holds that lock
// itself, with the head row's newest version saying "nothing pending". So
// either Store locks first, and expiry passes the stream over (SKIP LOCKED)
// or, once Store has committed, sees its pending messages in the head row;
// or expiry locks first, and Store, waiting for the lock, finds both rows
// gone and makes them again. Expiry takes every lock with SKIP LOCKED: it
// never waits, so it cannot deadlock with workers, which lock a stream's
// row and then its head, nor with Store, which does the reverse.
//
// The streams are visited in key order, one window of Config.CleanupBatch
// rows per statement, resuming where the last window ended, so no statement
// reads more than a window and no index is needed on updated_at (which
// every settle changes: such an index would cost each update its HOT path).
// The statement is expireStreams in sql_streams.go.

// expiryCursor is where the next window of idle-stream expiry starts.
type expiryCursor struct {
	mu    sync.Mutex
	after streamKey
}

// expireIdleStreams runs windows of expiry from where the last run ended
// until the pass reaches the last stream (the next run then starts over),
// or for at most one MaintenanceInterval, after which the next run goes on
// from there. Idle streams lie anywhere in key order, so a run that
// stopped at a window with none to expire could fall behind the rate at
// which streams go idle. It returns how many streams it deleted.
func (e *engine) expireIdleStreams(ctx context.Context, db querier) (int64, error) {
	if e.cfg.IdleStreamExpiry <= 0 {
		return 0, nil
	}
	e.expiry.mu.Lock()
	defer e.expiry.mu.Unlock()
	var total int64
	deadline := time.Now().Add(e.cfg.MaintenanceInterval)
	for ctx.Err() == nil {
		var seen, expired int64
		var last streamKey
		rows, err := db.Query(ctx, e.sql.expireStreams, e.expiry.after.source, e.expiry.after.stream,
			e.cfg.CleanupBatch, e.cfg.IdleStreamExpiry.Seconds())
		if err == nil {
			for rows.Next() {
				err = rows.Scan(&seen, &last.source, &last.stream, &expired)
			}
			rows.Close()
			if err == nil {
				err = rows.Err()
			}
		}
		if err != nil {
			return total, fmt.Errorf("inbox: expire idle streams: %w", err)
		}
		total += expired
		if seen < int64(e.cfg.CleanupBatch) {
			e.expiry.after = streamKey{}
			return total, nil
		}
		e.expiry.after = last
		if time.Now().After(deadline) {
			return total, nil
		}
	}
	return total, nil
}
