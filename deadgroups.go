package inbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

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

// errorPatternSQL masks the variable parts of a last error, in SQL so that
// grouping, filtering and acting on a group all agree: UUIDs, then runs of
// hex digits that contain a digit (hashes, trace IDs), then numbers. The
// text is cut first so the cost per row is bounded.
const errorPatternSQL = `regexp_replace(regexp_replace(regexp_replace(
	left(coalesce(last_error, ''), 500),
	'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'gi'),
	'\m(?=[a-f]*[0-9])[0-9a-f]{8,}\M', '<hex>', 'gi'),
	'[0-9]+', '#', 'g')`

// fingerprintSQL is the short key of a pattern, fit for a URL.
const fingerprintSQL = `left(md5(` + errorPatternSQL + `), 12)`

// DeadQuery selects dead messages. Zero fields match everything.
type DeadQuery struct {
	Topic         string
	ErrorContains string // case-insensitive substring of the last error
	// Since and Until bound when the message was received.
	Since, Until time.Time
	// Fingerprint selects one group (DeadGroup.Fingerprint).
	Fingerprint string
	// BeforeRowID pages newest-first lists: pass the last RowID of the
	// previous page. Group actions ignore it.
	BeforeRowID int64
	Limit       int // defaults to 50
}

func (q DeadQuery) limit() int {
	if q.Limit <= 0 {
		return 50
	}
	return q.Limit
}

// where renders the query as SQL conditions on $1..$6.
func (q DeadQuery) where() (string, []any) {
	return `state = 'dead' AND ($1 = '' OR topic = $1)
		AND ($2 = '' OR strpos(lower(coalesce(last_error, '')), lower($2)) > 0)
		AND ($3::timestamptz IS NULL OR received_at >= $3) AND ($4::timestamptz IS NULL OR received_at < $4)
		AND ($5 = '' OR ` + fingerprintSQL + ` = $5)
		AND ($6::bigint = 0 OR id < $6)`,
		[]any{q.Topic, q.ErrorContains, optionalTime(q.Since), optionalTime(q.Until), q.Fingerprint, q.BeforeRowID}
}

func optionalTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

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
	where, args := q.where()
	rows, err := in.pool.Query(ctx, `
WITH scanned AS (
    SELECT id, topic, received_at, `+errorPatternSQL+` AS pattern
    FROM `+in.table("inbox_messages")+` WHERE `+where+`
    ORDER BY id DESC LIMIT $7
), groups AS (
    SELECT pattern, count(*) AS n, max(id) AS newest, min(received_at) AS first, max(received_at) AS last,
           (array_agg(DISTINCT topic ORDER BY topic))[1:10] AS topics
    FROM scanned GROUP BY pattern
)
SELECT left(md5(pattern), 12), pattern, n, newest, first, last, topics, (SELECT count(*) FROM scanned)
FROM groups ORDER BY n DESC, pattern LIMIT $8`, append(args, DeadGroupScan, q.limit())...)
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
	where, args := q.where()
	rows, err := in.pool.Query(ctx, `SELECT id FROM `+in.table("inbox_messages")+` WHERE `+where+`
		ORDER BY id DESC LIMIT $7`, append(args, q.limit())...)
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
	list, err := in.ListMessages(ctx, MessageFilter{State: "dead", RowIDs: ids, Limit: len(ids)})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(list, func(a, b MessageInfo) int { return cmp.Compare(b.RowID, a.RowID) })
	return list, nil
}

// RetryDeadGroup requeues every dead message matching q (as RetryDead
// does), in batches, and returns how many it requeued.
func (in *Inbox) RetryDeadGroup(ctx context.Context, q DeadQuery) (int, error) {
	return in.eachDeadBatch(ctx, q, func(ids []int64) (int, error) {
		return in.RetryDead(ctx, MessageFilter{RowIDs: ids})
	})
}

// DeleteDeadGroup deletes every dead message matching q (as DeleteDead
// does), in batches, and returns how many it deleted.
func (in *Inbox) DeleteDeadGroup(ctx context.Context, q DeadQuery) (int, error) {
	return in.eachDeadBatch(ctx, q, func(ids []int64) (int, error) {
		return in.DeleteDead(ctx, MessageFilter{RowIDs: ids})
	})
}

// eachDeadBatch walks the dead messages matching q by row ID, oldest
// first, and applies fn to each batch.
func (in *Inbox) eachDeadBatch(ctx context.Context, q DeadQuery, fn func([]int64) (int, error)) (int, error) {
	q.BeforeRowID = 0
	where, args := q.where()
	sql := `SELECT id FROM ` + in.table("inbox_messages") + ` WHERE ` + where + ` AND id > $7 ORDER BY id LIMIT $8`
	var total int
	var after int64
	for {
		rows, err := in.pool.Query(ctx, sql, append(args, after, deadGroupBatch)...)
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

// MessageBody returns at most limit bytes of a message's body, and the
// body's full size. A processed message has no body any more.
func (in *Inbox) MessageBody(ctx context.Context, rowID int64, limit int) ([]byte, int, error) {
	var body []byte
	var size int
	err := in.pool.QueryRow(ctx, `SELECT substring(body FROM 1 FOR $2), coalesce(length(body), 0)
		FROM `+in.table("inbox_messages")+` WHERE id = $1`, rowID, max(limit, 0)).Scan(&body, &size)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, 0, fmt.Errorf("inbox: message %d: %w", rowID, ErrNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("inbox: body of message %d: %w", rowID, err)
	}
	return body, size, nil
}
