package inbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Operator actions and views. They work on a stopped Inbox too:
// admin_messages.go reads messages, admin_dead.go acts on dead ones,
// admin_streams.go reads and acts on streams.

// ErrNotFound is returned when the message or stream an operation names does
// not exist, or is not in a state the operation applies to.
var ErrNotFound = errors.New("inbox: not found")

// MessageInfo describes one stored message, for operators. Body is not
// included; see Message for that.
type MessageInfo struct {
	RowID  int64
	Source string
	ID     string
	Topic  string
	Stream string
	Seq    int64
	State  State
	// Attempts counts the attempts made so far (reset by a requeue): the
	// next handler run sees Message.Attempt = Attempts+1.
	Attempts    int
	LastError   string
	Headers     map[string]string
	BodyBytes   int
	ReceivedAt  time.Time
	RunAt       time.Time
	ProcessedAt *time.Time
	// OutOfOrder is set when an operator requeued the message to run below
	// its stream's watermark (RetryDeadMessages with OutOfOrder).
	OutOfOrder bool
}

// MessageFilter selects messages. Zero fields match everything.
type MessageFilter struct {
	State         State // any when empty
	Topic         string
	ErrorContains string // case-insensitive substring of the last error
	Since, Until  time.Time
	// AfterRowID matches only rows with a larger row ID: to page through a
	// long list, pass the last RowID of the previous page.
	AfterRowID int64
	// RowIDs, when not nil, matches only these rows (none, when empty).
	RowIDs []int64
	Limit  int // defaults to 100
}

func scanMessageInfo(row pgx.CollectableRow) (MessageInfo, error) {
	var m MessageInfo
	err := row.Scan(&m.RowID, &m.Source, &m.ID, &m.Topic, &m.Stream, &m.Seq, &m.State, &m.Attempts,
		&m.LastError, &m.Headers, &m.BodyBytes, &m.ReceivedAt, &m.RunAt, &m.ProcessedAt, &m.OutOfOrder)
	return m, err
}

// args are the filter's values for messageWhere's $1..$7.
func (f MessageFilter) args() []any {
	return []any{string(f.State), f.Topic, f.ErrorContains, nullIfZero(f.Since), nullIfZero(f.Until), f.AfterRowID, f.RowIDs}
}

// nullIfZero makes an unset time a SQL NULL.
func nullIfZero(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func (f MessageFilter) limit() int {
	if f.Limit <= 0 {
		return 100
	}
	return f.Limit
}

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

// args are the query's values for deadWhere's $1..$6.
func (q DeadQuery) args() []any {
	return []any{q.Topic, q.ErrorContains, nullIfZero(q.Since), nullIfZero(q.Until), q.Fingerprint, q.BeforeRowID}
}

// ListMessages returns messages matching f, oldest first.
func (in *Inbox) ListMessages(ctx context.Context, f MessageFilter) ([]MessageInfo, error) {
	rows, err := in.e.pool.Query(ctx, in.e.sql.listMessages, append(f.args(), f.limit())...)
	if err != nil {
		return nil, fmt.Errorf("inbox: list messages: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanMessageInfo)
	if err != nil {
		return nil, fmt.Errorf("inbox: list messages: %w", err)
	}
	return out, nil
}

// GetMessage returns one message by its row ID.
func (in *Inbox) GetMessage(ctx context.Context, rowID int64) (MessageInfo, error) {
	rows, err := in.e.pool.Query(ctx, in.e.sql.getMessage, rowID)
	if err != nil {
		return MessageInfo{}, fmt.Errorf("inbox: get message %d: %w", rowID, err)
	}
	m, err := pgx.CollectExactlyOneRow(rows, scanMessageInfo)
	if errors.Is(err, pgx.ErrNoRows) {
		return MessageInfo{}, fmt.Errorf("inbox: message %d: %w", rowID, ErrNotFound)
	}
	if err != nil {
		return MessageInfo{}, fmt.Errorf("inbox: get message %d: %w", rowID, err)
	}
	return m, nil
}

// MessageBody returns at most limit bytes of a message's body, and the
// body's full size. A processed message has no body any more.
func (in *Inbox) MessageBody(ctx context.Context, rowID int64, limit int) ([]byte, int, error) {
	var body []byte
	var size int
	err := in.e.pool.QueryRow(ctx, in.e.sql.messageBody, rowID, max(limit, 0)).Scan(&body, &size)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, 0, fmt.Errorf("inbox: message %d: %w", rowID, ErrNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("inbox: body of message %d: %w", rowID, err)
	}
	return body, size, nil
}
