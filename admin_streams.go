package inbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// Operator views of and actions on ordered streams. The views are bounded
// so they stay quick on large tables.

// StreamInfo is what operators see of one ordered stream.
type StreamInfo struct {
	Source, Stream string
	// NextSeq is the watermark: the sequence number the stream waits for.
	NextSeq int64
	// Pending counts stored messages not yet applied (up to
	// StreamPendingLimit, except in ListStreams); HeadSeq is the lowest of
	// their sequence numbers (0 when none).
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
	rows, err := in.e.pool.Query(ctx, in.e.sql.listStreams, f.Source, f.Parked, f.Gap, f.All, limit)
	if err != nil {
		return nil, fmt.Errorf("inbox: list streams: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanStreamInfo)
	if err != nil {
		return nil, fmt.Errorf("inbox: list streams: %w", err)
	}
	return out, nil
}

// RetryStream unparks a stream, and returns its new state. If a dead
// message parked it, that message is requeued with a fresh attempt count
// and runs next.
func (in *Inbox) RetryStream(ctx context.Context, source, stream string) (StreamInfo, error) {
	return in.e.onStream(ctx, source, stream, func(tx pgx.Tx, st lockedStream) error {
		if st.parkedMessage != nil {
			if _, err := tx.Exec(ctx, in.e.sql.requeueParked, *st.parkedMessage); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, in.e.sql.resumeStream, st.source, st.stream)
		return err
	})
}

// SkipStream moves a stream past what blocks it and unparks it, and
// returns its new state: the message at its watermark (the one that parked
// it, or a failing one) is marked dead as skipped; if the watermark's
// message is missing (a gap), the stream jumps to its lowest pending
// sequence number. The skip is recorded on the stream (StreamInfo.LastSkip),
// and the skipped range in inbox_skips: a message arriving later for it is
// kept as dead instead of being taken for a duplicate.
func (in *Inbox) SkipStream(ctx context.Context, source, stream string) (StreamInfo, error) {
	return in.e.onStream(ctx, source, stream, func(tx pgx.Tx, st lockedStream) error {
		nextSeq := st.nextSeq
		if nextSeq == math.MaxInt64 {
			return errors.New(seqCannotBeFollowed(nextSeq))
		}
		var head *int64
		if err := tx.QueryRow(ctx, in.e.sql.pendingHead, st.source, st.stream, nextSeq).Scan(&head); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, in.e.sql.skipMessage, st.source, st.stream, nextSeq)
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
		_, err = tx.Exec(ctx, in.e.sql.skipStream, st.source, st.stream, nextSeq, next, note)
		return err
	})
}

// lockedStream is a stream an operator action holds the row lock of.
type lockedStream struct {
	source, stream string
	nextSeq        int64
	parkedMessage  *int64
}

// onStream runs fn holding the stream's row lock, which waits for a worker
// that is processing the stream to commit, and returns the stream's state
// as fn left it. An empty source means Config.Source.
func (e *engine) onStream(ctx context.Context, source, stream string, fn func(tx pgx.Tx, st lockedStream) error) (StreamInfo, error) {
	if source == "" {
		source = e.cfg.Source
	}
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		return StreamInfo{}, fmt.Errorf("inbox: begin: %w", err)
	}
	defer rollback(tx)
	st := lockedStream{source: source, stream: stream}
	err = tx.QueryRow(ctx, e.sql.lockStream, source, stream).Scan(&st.nextSeq, &st.parkedMessage)
	if errors.Is(err, pgx.ErrNoRows) {
		return StreamInfo{}, fmt.Errorf("inbox: stream %q of source %q: %w", stream, source, ErrNotFound)
	}
	if err != nil {
		return StreamInfo{}, fmt.Errorf("inbox: lock stream %q: %w", stream, err)
	}
	if err := fn(tx, st); err != nil {
		return StreamInfo{}, fmt.Errorf("inbox: stream %q: %w", stream, err)
	}
	if err := e.refreshHeads(ctx, tx, streamKey{source, stream}); err != nil {
		return StreamInfo{}, fmt.Errorf("inbox: stream %q: rewrite its head: %w", stream, err)
	}
	rows, err := tx.Query(ctx, e.sql.streamInfo, StreamPendingLimit, source, stream)
	if err != nil {
		return StreamInfo{}, fmt.Errorf("inbox: read stream %q back: %w", stream, err)
	}
	info, err := pgx.CollectExactlyOneRow(rows, scanStreamInfo)
	if err != nil {
		return StreamInfo{}, fmt.Errorf("inbox: read stream %q back: %w", stream, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return StreamInfo{}, fmt.Errorf("inbox: commit: %w", err)
	}
	e.wake.signal()
	return info, nil
}

// scanStreamInfo reads the StreamInfo columns of listStreams and of
// streamPageColumns.
func scanStreamInfo(row pgx.CollectableRow) (StreamInfo, error) {
	var s StreamInfo
	err := row.Scan(&s.Source, &s.Stream, &s.NextSeq, &s.Pending, &s.HeadSeq, &s.OldestPending,
		&s.GapSince, &s.ParkedAt, &s.ParkedReason, &s.ParkedMessage, &s.Skipped, &s.LastSkip)
	return s, err
}

// StreamPendingLimit caps the pending count of each stream that
// StreamDetail, PageStreams and DeepestStreams report: a count equal to it
// means "at least this many".
const StreamPendingLimit = 10_000

// DeepestStreamScan is how many of the longest-due ordered messages
// DeepestStreams examines to find the streams it ranks.
const DeepestStreamScan = 10_000

// StreamDetail is one stream as an operator inspects it.
type StreamDetail struct {
	StreamInfo
	// TailSeq is the highest pending sequence number (0 when none).
	TailSeq int64
	// MissingFrom..MissingTo is the range of sequence numbers the stream
	// waits for, while it waits on a gap (both 0 otherwise).
	MissingFrom, MissingTo int64
	// Head lists the first pending messages, in sequence order (at most
	// 20).
	Head []MessageInfo
}

// StreamDetail returns one stream (source empty means Config.Source), or
// an error wrapping ErrNotFound.
func (in *Inbox) StreamDetail(ctx context.Context, source, stream string) (StreamDetail, error) {
	if source == "" {
		source = in.e.cfg.Source
	}
	rows, err := in.e.pool.Query(ctx, in.e.sql.streamDetail, StreamPendingLimit, source, stream)
	if err != nil {
		return StreamDetail{}, fmt.Errorf("inbox: stream %q: %w", stream, err)
	}
	var head []int64
	d, err := pgx.CollectExactlyOneRow(rows, func(row pgx.CollectableRow) (StreamDetail, error) {
		var d StreamDetail
		s := &d.StreamInfo
		err := row.Scan(&s.Source, &s.Stream, &s.NextSeq, &s.Pending, &s.HeadSeq, &s.OldestPending,
			&s.GapSince, &s.ParkedAt, &s.ParkedReason, &s.ParkedMessage, &s.Skipped, &s.LastSkip,
			&d.TailSeq, &head)
		return d, err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return StreamDetail{}, fmt.Errorf("inbox: stream %q of source %q: %w", stream, source, ErrNotFound)
	}
	if err != nil {
		return StreamDetail{}, fmt.Errorf("inbox: stream %q: %w", stream, err)
	}
	if d.GapSince != nil && d.HeadSeq > d.NextSeq {
		d.MissingFrom, d.MissingTo = d.NextSeq, d.HeadSeq-1
	}
	if len(head) > 0 {
		d.Head, err = in.ListMessages(ctx, MessageFilter{RowIDs: head, Limit: len(head)})
		if err != nil {
			return StreamDetail{}, err
		}
		slices.SortFunc(d.Head, func(a, b MessageInfo) int { return cmp.Compare(a.Seq, b.Seq) })
	}
	return d, nil
}

// StreamQuery selects a page of streams in (source, stream) order.
type StreamQuery struct {
	// State is "parked" (parked streams) or "gap" (streams waiting on a
	// missing sequence number, not parked).
	State string
	// AfterSource and AfterStream page on: pass the last stream of the
	// previous page.
	AfterSource, AfterStream string
	Limit                    int // defaults to 50
}

// PageStreams returns a page of parked or gap-waiting streams, paged by
// key. Pending counts stop at StreamPendingLimit.
func (in *Inbox) PageStreams(ctx context.Context, q StreamQuery) ([]StreamInfo, error) {
	var sql string
	switch q.State {
	case "parked":
		sql = in.e.sql.pageParkedStreams
	case "gap":
		sql = in.e.sql.pageGapStreams
	default:
		return nil, fmt.Errorf("inbox: page streams: state %q is not parked or gap", q.State)
	}
	limit := q.Limit
	if limit <= 0 {
		limit = 50
	}
	rows, err := in.e.pool.Query(ctx, sql, StreamPendingLimit, q.AfterSource, q.AfterStream, limit)
	if err != nil {
		return nil, fmt.Errorf("inbox: page %s streams: %w", q.State, err)
	}
	out, err := pgx.CollectRows(rows, scanStreamInfo)
	if err != nil {
		return nil, fmt.Errorf("inbox: page %s streams: %w", q.State, err)
	}
	return out, nil
}

// DeepestStreams returns up to n streams with the most pending messages,
// deepest first, among the streams of the DeepestStreamScan longest-due
// ordered messages (where a backlog shows first). Pending counts stop at
// StreamPendingLimit.
func (in *Inbox) DeepestStreams(ctx context.Context, n int) ([]StreamInfo, error) {
	if n <= 0 {
		n = 10
	}
	rows, err := in.e.pool.Query(ctx, in.e.sql.deepestStreams, StreamPendingLimit, DeepestStreamScan, n)
	if err != nil {
		return nil, fmt.Errorf("inbox: deepest streams: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanStreamInfo)
	if err != nil {
		return nil, fmt.Errorf("inbox: deepest streams: %w", err)
	}
	return out, nil
}
