package inbox

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
)

// StreamInfo is what operators see of one ordered stream.
type StreamInfo struct {
	Source, Stream string
	// NextSeq is the watermark: the sequence number the stream waits for.
	NextSeq int64
	// Pending counts stored messages not yet applied; HeadSeq is the lowest
	// of their sequence numbers (0 when none).
	Pending int
	HeadSeq int64
	// OldestPending is when the oldest pending message was received.
	OldestPending *time.Time
	// GapSince is set while the stream waits for a missing sequence number.
	GapSince *time.Time
	// ParkedAt, ParkedReason and ParkedMessage are set while it is parked.
	ParkedAt      *time.Time
	ParkedReason  string
	ParkedMessage int64
	// Skipped counts sequence numbers given up on; LastSkip says which.
	Skipped  int64
	LastSkip string
}

// StreamFilter selects streams. With neither flag set, streams with
// pending messages, a gap or a park are listed.
type StreamFilter struct {
	Parked bool // only parked streams
	Gap    bool // only streams waiting on a gap
	All    bool // every stream, idle ones too
	Source string
	Limit  int // defaults to 100
}

// ListStreams lists streams, parked and longest-waiting first.
func (in *Inbox) ListStreams(ctx context.Context, f StreamFilter) ([]StreamInfo, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	rows, err := in.pool.Query(ctx, `
SELECT s.source, s.stream, s.next_seq, coalesce(p.pending, 0), coalesce(p.head, 0), p.oldest,
       s.gap_since, s.parked_at, coalesce(s.parked_reason, ''), coalesce(s.parked_message_id, 0),
       s.skipped, coalesce(s.last_skip, '')
FROM `+in.table("inbox_streams")+` s
LEFT JOIN LATERAL (
    SELECT count(*) AS pending, min(seq) AS head, min(received_at) AS oldest
    FROM `+in.table("inbox_messages")+` m
    WHERE m.source = s.source AND m.stream = s.stream AND m.state = 'pending' AND m.stream IS NOT NULL
) p ON true
WHERE ($1 = '' OR s.source = $1)
  AND (NOT $2 OR s.parked_at IS NOT NULL)
  AND (NOT $3 OR s.gap_since IS NOT NULL)
  AND ($4 OR $2 OR $3 OR s.parked_at IS NOT NULL OR s.gap_since IS NOT NULL OR coalesce(p.pending, 0) > 0)
ORDER BY s.parked_at NULLS LAST, s.gap_since NULLS LAST, p.oldest NULLS LAST, s.source, s.stream
LIMIT $5`, f.Source, f.Parked, f.Gap, f.All, limit)
	if err != nil {
		return nil, fmt.Errorf("inbox: list streams: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (StreamInfo, error) {
		var s StreamInfo
		err := row.Scan(&s.Source, &s.Stream, &s.NextSeq, &s.Pending, &s.HeadSeq, &s.OldestPending,
			&s.GapSince, &s.ParkedAt, &s.ParkedReason, &s.ParkedMessage, &s.Skipped, &s.LastSkip)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("inbox: list streams: %w", err)
	}
	return out, nil
}

// RetryStream unparks a stream. If a dead message parked it, that message
// is requeued with a fresh attempt count and runs next.
func (in *Inbox) RetryStream(ctx context.Context, source, stream string) error {
	if source == "" {
		source = in.cfg.Source // the closure below uses it too, not only onStream
	}
	return in.onStream(ctx, source, stream, func(tx pgx.Tx, nextSeq int64, parkedMessage *int64) error {
		if parkedMessage != nil {
			if _, err := tx.Exec(ctx, `UPDATE `+in.table("inbox_messages")+`
				SET state = 'pending', attempts = 0, run_at = now() WHERE id = $1 AND state = 'dead'`, *parkedMessage); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, `UPDATE `+in.table("inbox_streams")+`
			SET parked_at = NULL, parked_reason = NULL, parked_message_id = NULL,
			    gap_since = NULL, gap_reported = false, updated_at = now()
			WHERE source = $1 AND stream = $2`, source, stream)
		return err
	})
}

// SkipStream moves a stream past what blocks it and unparks it: the message
// at its watermark (the one that parked it, or a failing one) is marked
// dead as skipped; if the watermark's message is missing (a gap), the
// stream jumps to its lowest pending sequence number. The skip is recorded
// on the stream, and the skipped range in inbox_skips: a message arriving
// later for it is kept as dead instead of being taken for a duplicate.
func (in *Inbox) SkipStream(ctx context.Context, source, stream string) error {
	if source == "" {
		source = in.cfg.Source // the closure below uses it too, not only onStream
	}
	return in.onStream(ctx, source, stream, func(tx pgx.Tx, nextSeq int64, _ *int64) error {
		if nextSeq == math.MaxInt64 {
			return errors.New(seqCannotBeFollowed(nextSeq))
		}
		var head *int64
		if err := tx.QueryRow(ctx, `SELECT min(seq) FROM `+in.table("inbox_messages")+`
			WHERE source = $1 AND stream = $2 AND state = 'pending' AND stream IS NOT NULL AND seq >= $3`,
			source, stream, nextSeq).Scan(&head); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `UPDATE `+in.table("inbox_messages")+`
			SET state = 'dead', last_error = coalesce(last_error || E'\n', '') || 'skipped by operator'
			WHERE source = $1 AND stream = $2 AND seq = $3 AND state IN ('pending', 'dead')`, source, stream, nextSeq)
		if err != nil {
			return err
		}
		next := nextSeq + 1
		note := fmt.Sprintf("skipped sequence %d by operator at %s", nextSeq, time.Now().UTC().Format(time.RFC3339))
		if tag.RowsAffected() == 0 {
			if head == nil {
				return fmt.Errorf("stream %q has no message at or after sequence %d to skip to", stream, nextSeq)
			}
			next = *head
			note = fmt.Sprintf("skipped missing sequence %d..%d by operator at %s", nextSeq, next-1, time.Now().UTC().Format(time.RFC3339))
		}
		_, err = tx.Exec(ctx, in.sql.skipStream, source, stream, nextSeq, next, note)
		return err
	})
}

// onStream runs fn holding the stream's row lock, which waits for a worker
// that is processing the stream to commit.
func (in *Inbox) onStream(ctx context.Context, source, stream string, fn func(tx pgx.Tx, nextSeq int64, parkedMessage *int64) error) error {
	if source == "" {
		source = in.cfg.Source
	}
	tx, err := in.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("inbox: begin: %w", err)
	}
	defer rollback(tx)
	var nextSeq int64
	var parked *int64
	err = tx.QueryRow(ctx, `SELECT next_seq, parked_message_id FROM `+in.table("inbox_streams")+`
		WHERE source = $1 AND stream = $2 FOR UPDATE`, source, stream).Scan(&nextSeq, &parked)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("inbox: stream %q of source %q: %w", stream, source, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("inbox: lock stream %q: %w", stream, err)
	}
	if err := fn(tx, nextSeq, parked); err != nil {
		return fmt.Errorf("inbox: stream %q: %w", stream, err)
	}
	if err := in.refreshHeads(ctx, tx, streamKey{source, stream}); err != nil {
		return fmt.Errorf("inbox: stream %q: rewrite its head: %w", stream, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("inbox: commit: %w", err)
	}
	in.wake.signal()
	return nil
}
