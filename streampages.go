package inbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Streams for dashboards: one stream in detail, lists paged by key, and
// the deepest backlogs, each bounded so it stays quick on large tables.

// StreamPendingLimit caps the pending count of each stream that
// StreamDetail, PageStreams and DeepestStreams report: a count equal to it
// means "at least this many".
const StreamPendingLimit = 10_000

// DeepestStreamScan is how many of the longest-due ordered messages
// DeepestStreams examines to find the streams it ranks.
const DeepestStreamScan = 10_000

// streamPageColumns reads a StreamInfo of stream row s, its pending count
// capped at $1.
const streamPageColumns = `s.source, s.stream, s.next_seq,
    (SELECT count(*) FROM (SELECT 1 FROM {messages} m WHERE m.source = s.source AND m.stream = s.stream
        AND m.state = 'pending' AND m.stream IS NOT NULL LIMIT $1) x),
    coalesce((SELECT min(m.seq) FROM {messages} m WHERE m.source = s.source AND m.stream = s.stream
        AND m.state = 'pending' AND m.stream IS NOT NULL), 0),
    (SELECT min(m.received_at) FROM {messages} m WHERE m.source = s.source AND m.stream = s.stream
        AND m.state = 'pending' AND m.stream IS NOT NULL),
    s.gap_since, s.parked_at, coalesce(s.parked_reason, ''), coalesce(s.parked_message_id, 0),
    s.skipped, coalesce(s.last_skip, '')`

func (in *Inbox) streamPageColumns() string {
	return strings.ReplaceAll(streamPageColumns, "{messages}", in.table("inbox_messages"))
}

func scanStreamPage(row pgx.CollectableRow) (StreamInfo, error) {
	var s StreamInfo
	err := row.Scan(&s.Source, &s.Stream, &s.NextSeq, &s.Pending, &s.HeadSeq, &s.OldestPending,
		&s.GapSince, &s.ParkedAt, &s.ParkedReason, &s.ParkedMessage, &s.Skipped, &s.LastSkip)
	return s, err
}

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
		source = in.cfg.Source
	}
	rows, err := in.pool.Query(ctx, `SELECT `+in.streamPageColumns()+`,
    coalesce((SELECT max(m.seq) FROM `+in.table("inbox_messages")+` m WHERE m.source = s.source
        AND m.stream = s.stream AND m.state = 'pending' AND m.stream IS NOT NULL), 0),
    (SELECT coalesce(array_agg(h.id ORDER BY h.seq), '{}') FROM (SELECT m.id, m.seq FROM `+in.table("inbox_messages")+` m
        WHERE m.source = s.source AND m.stream = s.stream AND m.state = 'pending' AND m.stream IS NOT NULL
        ORDER BY m.seq LIMIT 20) h)
FROM `+in.table("inbox_streams")+` s WHERE s.source = $2 AND s.stream = $3`, StreamPendingLimit, source, stream)
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
	var cond string
	switch q.State {
	case "parked":
		cond = `s.parked_at IS NOT NULL`
	case "gap":
		cond = `s.gap_since IS NOT NULL AND s.parked_at IS NULL`
	default:
		return nil, fmt.Errorf("inbox: page streams: state %q is not parked or gap", q.State)
	}
	limit := q.Limit
	if limit <= 0 {
		limit = 50
	}
	rows, err := in.pool.Query(ctx, `SELECT `+in.streamPageColumns()+`
FROM `+in.table("inbox_streams")+` s
WHERE `+cond+` AND (s.source, s.stream) > ($2, $3)
ORDER BY s.source, s.stream LIMIT $4`, StreamPendingLimit, q.AfterSource, q.AfterStream, limit)
	if err != nil {
		return nil, fmt.Errorf("inbox: page %s streams: %w", q.State, err)
	}
	out, err := pgx.CollectRows(rows, scanStreamPage)
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
	rows, err := in.pool.Query(ctx, `
WITH heads AS (
    SELECT DISTINCT h.source, h.stream FROM (
        SELECT m.source, m.stream FROM `+in.table("inbox_messages")+` m
        WHERE m.state = 'pending' AND m.stream IS NOT NULL
        ORDER BY m.run_at, m.id LIMIT $2) h
)
SELECT `+in.streamPageColumns()+`
FROM heads h JOIN `+in.table("inbox_streams")+` s ON s.source = h.source AND s.stream = h.stream
ORDER BY 4 DESC, 1, 2 LIMIT $3`, StreamPendingLimit, DeepestStreamScan, n)
	if err != nil {
		return nil, fmt.Errorf("inbox: deepest streams: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanStreamPage)
	if err != nil {
		return nil, fmt.Errorf("inbox: deepest streams: %w", err)
	}
	return out, nil
}
