package inbox

import (
	"context"
	"fmt"
	"strings"
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
// takes for every pending message it stores (see the store statement), and
// expiry deletes a stream only while it holds that lock itself, with the
// head row's newest version saying "nothing pending". So either Store locks
// first, and expiry passes the stream over (SKIP LOCKED) or, once Store has
// committed, sees its pending messages in the head row; or expiry locks
// first, and Store, waiting for the lock, finds both rows gone and makes
// them again. Expiry takes every lock with SKIP LOCKED: it never waits, so
// it cannot deadlock with workers, which lock a stream's row and then its
// head, nor with Store, which does the reverse.
//
// The streams are visited in key order, one window of Config.CleanupBatch
// rows per statement, resuming where the last window ended, so no statement
// reads more than a window and no index is needed on updated_at (which
// every settle changes: such an index would cost each update its HOT path).

// expireStreams is the statement: $1, $2 the key the last window ended at,
// $3 the window's size, $4 the idle time in seconds. It returns how many
// streams the window held, the last one's key, and how many it expired.
func newExpireStreams(r *strings.Replacer) string {
	return r.Replace(`
WITH win AS (
    SELECT s.source, s.stream FROM {schema}.inbox_streams s
    WHERE (s.source, s.stream) > ($1::text, $2::text)
    ORDER BY s.source, s.stream
    LIMIT $3
),
idle AS (
    SELECT s.source, s.stream FROM {schema}.inbox_streams s
    JOIN win w ON w.source = s.source AND w.stream = s.stream
    WHERE s.parked_at IS NULL AND s.updated_at < now() - make_interval(secs => $4)
    ORDER BY s.source, s.stream
    FOR UPDATE OF s SKIP LOCKED
),
quiet AS (
    SELECT h.source, h.stream FROM {schema}.inbox_stream_heads h
    JOIN idle i ON i.source = h.source AND i.stream = h.stream
    WHERE h.low_seq IS NULL AND NOT h.parked
    ORDER BY h.source, h.stream
    FOR UPDATE OF h SKIP LOCKED
),
heads_gone AS (
    DELETE FROM {schema}.inbox_stream_heads h USING quiet q
    WHERE h.source = q.source AND h.stream = q.stream
    RETURNING h.source, h.stream
),
streams_gone AS (
    DELETE FROM {schema}.inbox_streams s USING heads_gone g
    WHERE s.source = g.source AND s.stream = g.stream
    RETURNING s.source, s.stream
),
skips_gone AS (
    DELETE FROM {schema}.inbox_skips k USING streams_gone g
    WHERE k.source = g.source AND k.stream = g.stream
)
SELECT (SELECT count(*) FROM win), coalesce(l.source, ''), coalesce(l.stream, ''),
       (SELECT count(*) FROM streams_gone)
FROM (SELECT 1) one
LEFT JOIN (SELECT source, stream FROM win ORDER BY source DESC, stream DESC LIMIT 1) l ON true`)
}

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
func (in *Inbox) expireIdleStreams(ctx context.Context, db querier) (int64, error) {
	if in.cfg.IdleStreamExpiry <= 0 {
		return 0, nil
	}
	in.expiry.mu.Lock()
	defer in.expiry.mu.Unlock()
	var total int64
	deadline := time.Now().Add(in.cfg.MaintenanceInterval)
	for ctx.Err() == nil {
		var seen, expired int64
		var last streamKey
		rows, err := db.Query(ctx, in.sql.expireStreams, in.expiry.after.source, in.expiry.after.stream,
			in.cfg.CleanupBatch, in.cfg.IdleStreamExpiry.Seconds())
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
		if seen < int64(in.cfg.CleanupBatch) {
			in.expiry.after = streamKey{}
			return total, nil
		}
		in.expiry.after = last
		if time.Now().After(deadline) {
			return total, nil
		}
	}
	return total, nil
}
