package inbox

import (
	"context"
	"sort"
	"strings"

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
//     it makes the stream ready.
//     When the upsert creates the row, Store also makes the stream's
//     inbox_streams row: a stream has both rows or neither (expiry.go).
//   - Whatever changes a stream's watermark, park state or head message (a
//     worker's settle, the gap sweep, an operator, a broken attempt) then
//     rewrites the row from the messages, in two statements: one that locks
//     the row, waiting for a Store that holds it to commit, and one, with a
//     fresh snapshot that therefore sees that Store's messages, that
//     rewrites it. A Store that comes later waits for that rewrite to commit
//     and judges its arrivals against the new watermark.
//   - A claim that finds nothing to run (the row was early) rewrites the
//     row as any settle does.

type headQueries struct {
	lock, restore, refresh, upsert string
}

func newHeadQueries(r *strings.Replacer) headQueries {
	return headQueries{
		// In key order, as every statement that locks several heads, so
		// that two of them cannot deadlock.
		lock: r.Replace(`
SELECT count(*) FROM (
    SELECT 1 FROM {schema}.inbox_stream_heads h
    JOIN unnest($1::text[], $2::text[]) AS u(source, stream) ON h.source = u.source AND h.stream = u.stream
    ORDER BY h.source, h.stream
    FOR UPDATE OF h) locked`),

		// Between lock and refresh when messages become pending outside
		// Store (an operator's requeue): a stream without a head row,
		// never made or expired (expiry.go), gets its inbox_streams row
		// again, at the first sequence number ($3). One with a head row
		// keeps its stream, as the lock holds off expiry.
		restore: r.Replace(`
INSERT INTO {schema}.inbox_streams (source, stream, next_seq)
SELECT u.source, u.stream, $3 FROM unnest($1::text[], $2::text[]) AS u(source, stream)
WHERE NOT EXISTS (SELECT 1 FROM {schema}.inbox_stream_heads h WHERE h.source = u.source AND h.stream = u.stream)
ORDER BY 1, 2
ON CONFLICT DO NOTHING`),

		// The stream's next step is the first message at its watermark or,
		// below it, an operator's out-of-order requeue (due at its run_at)
		// or a duplicate or late arrival stored during a race (due at once,
		// since it needs no handler): whichever is due first, with its
		// topic. A parked stream has none.
		refresh: r.Replace(`
INSERT INTO {schema}.inbox_stream_heads AS h (source, stream, next_seq, parked, low_seq, high_seq, ready_at, topic, head_id)
SELECT s.source, s.stream, s.next_seq, s.parked_at IS NOT NULL,
       (SELECT min(m.seq) FROM {schema}.inbox_messages m
        WHERE m.source = s.source AND m.stream = s.stream AND m.state = 'pending' AND m.stream IS NOT NULL),
       (SELECT max(m.seq) FROM {schema}.inbox_messages m
        WHERE m.source = s.source AND m.stream = s.stream AND m.state = 'pending' AND m.stream IS NOT NULL),
       CASE WHEN s.parked_at IS NULL THEN c.due END, c.topic, c.id
FROM unnest($1::text[], $2::text[]) AS u(source, stream)
JOIN {schema}.inbox_streams s ON s.source = u.source AND s.stream = u.stream
LEFT JOIN LATERAL (
    SELECT x.id, x.topic, x.due FROM (
        SELECT m.id, m.topic, CASE WHEN m.out_of_order THEN m.run_at ELSE now() END AS due
        FROM {schema}.inbox_messages m
        WHERE m.source = s.source AND m.stream = s.stream AND m.state = 'pending' AND m.stream IS NOT NULL
          AND m.seq < s.next_seq
        UNION ALL
        (SELECT m.id, m.topic, m.run_at
         FROM {schema}.inbox_messages m
         WHERE m.source = s.source AND m.stream = s.stream AND m.state = 'pending' AND m.stream IS NOT NULL
           AND m.seq = s.next_seq
         ORDER BY m.id LIMIT 1)
    ) x
    ORDER BY x.due, x.id LIMIT 1
) c ON true
ORDER BY 1, 2
ON CONFLICT (source, stream) DO UPDATE
SET next_seq = excluded.next_seq, parked = excluded.parked, low_seq = excluded.low_seq,
    high_seq = excluded.high_seq, ready_at = excluded.ready_at, topic = excluded.topic,
    head_id = excluded.head_id`),

		// Store's part, a CTE over its inserted pending messages of streams
		// ({arrivals}: source, stream, seq, topic, id, watermark as Store
		// read it). A new row judges by that watermark; an existing one by
		// its own next_seq, the newest. Only an arrival at or below it
		// makes the stream ready; it keeps the topic of a stream that was
		// ready already (its head is older than the arrival). It returns
		// each row with whether it created it (xmax is 0 only in a row
		// version this statement inserted; an updated one carries the lock
		// the upsert took).
		upsert: r.Replace(`
INSERT INTO {schema}.inbox_stream_heads AS h (source, stream, next_seq, low_seq, high_seq, ready_at, topic, head_id)
SELECT a.source, a.stream, a.watermark, a.seq, a.high_seq,
       CASE WHEN a.seq <= a.watermark THEN now() END, a.topic, a.id
FROM (
    SELECT DISTINCT ON (x.source, x.stream) x.source, x.stream, x.seq, x.topic, x.id, x.watermark,
           max(x.seq) OVER (PARTITION BY x.source, x.stream) AS high_seq
    FROM {arrivals} x
    ORDER BY x.source, x.stream, x.seq, x.id
) a
ORDER BY a.source, a.stream
ON CONFLICT (source, stream) DO UPDATE
SET low_seq = least(h.low_seq, excluded.low_seq),
    high_seq = greatest(h.high_seq, excluded.high_seq),
    ready_at = CASE WHEN h.parked OR excluded.low_seq > h.next_seq THEN h.ready_at
                    ELSE least(h.ready_at, now()) END,
    topic = CASE WHEN h.parked OR excluded.low_seq > h.next_seq OR h.ready_at IS NOT NULL THEN h.topic
                 ELSE excluded.topic END,
    head_id = CASE WHEN h.parked OR excluded.low_seq > h.next_seq OR h.ready_at IS NOT NULL THEN h.head_id
                   ELSE excluded.head_id END
RETURNING h.source, h.stream, h.next_seq, h.xmax = 0 AS created`),
	}
}

// streamKey names a stream.
type streamKey struct{ source, stream string }

// queueRefresh queues, on b, the rewrite of the heads of keys: their lock,
// then the rewrite in a statement of its own.
func (in *Inbox) queueRefresh(b *pgx.Batch, keys []streamKey) {
	in.queueHeads(b, keys, false)
}

// queueHeads is queueRefresh that, with restore, first makes the streams
// of keys again if they have no rows (see headQueries.restore).
func (in *Inbox) queueHeads(b *pgx.Batch, keys []streamKey, restore bool) {
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
	b.Queue(in.sql.heads.lock, sources, streams)
	if restore {
		b.Queue(in.sql.heads.restore, sources, streams, *in.cfg.FirstSeq)
	}
	b.Queue(in.sql.heads.refresh, sources, streams)
}

// refreshHeads rewrites the heads of keys in tx.
func (in *Inbox) refreshHeads(ctx context.Context, tx pgx.Tx, keys ...streamKey) error {
	return in.rewriteHeads(ctx, tx, keys, false)
}

// rewriteHeads is refreshHeads, or with restore, queueHeads' restore.
func (in *Inbox) rewriteHeads(ctx context.Context, tx pgx.Tx, keys []streamKey, restore bool) error {
	b := &pgx.Batch{}
	in.queueHeads(b, keys, restore)
	if b.Len() == 0 {
		return nil
	}
	return tx.SendBatch(ctx, b).Close()
}
