package inbox

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Store saves messages in one statement, keyed by (Source, ID): messages
// already stored, or whose sequence number their stream has applied, are
// duplicates and leave no row. A message whose sequence number its stream
// skipped before it arrived is stored dead (see StoreResult.Late). When Store returns nil the new rows are
// committed, so the caller may acknowledge the messages to their broker.
// A batch with an invalid message stores nothing and returns an
// *InvalidMessageError.
func (in *Inbox) Store(ctx context.Context, msgs ...Message) (StoreResult, error) {
	ctx, span := in.tel.startStore(ctx, msgs)
	res, err := in.store(ctx, in.pool, msgs)
	in.tel.endStore(ctx, span, msgs, res, err)
	if err == nil && res.Stored > 0 {
		in.wake.signal()
		in.warnUnhandled(msgs, res)
	}
	return res, err
}

// StoreTx is Store in the caller's transaction: the messages are stored (and
// visible to workers) only when the caller commits tx.
func (in *Inbox) StoreTx(ctx context.Context, tx pgx.Tx, msgs ...Message) (StoreResult, error) {
	ctx, span := in.tel.startStore(ctx, msgs)
	res, err := in.store(ctx, tx, msgs)
	in.tel.endStore(ctx, span, msgs, res, err)
	if err == nil && res.Stored > 0 {
		// Early is harmless: a worker that finds nothing yet goes back to
		// waiting, and the NOTIFY sent at commit wakes it again.
		in.wake.signal()
		in.warnUnhandled(msgs, res)
	}
	return res, err
}

// Validate reports whether Store would accept msg, as an
// *InvalidMessageError when it would not. Receivers use it to reject bad
// messages one by one instead of failing a whole batch.
func (in *Inbox) Validate(msg Message) error {
	return in.validate(0, &msg)
}

func (in *Inbox) validate(i int, m *Message) error {
	bad := func(reason, detail string) error {
		return &InvalidMessageError{Index: i, ID: m.ID, Reason: reason, Detail: detail}
	}
	source := m.Source
	if source == "" {
		source = in.cfg.Source
	}
	switch {
	case m.ID == "":
		return bad(ReasonMissingID, "")
	case len(m.ID) > MaxIDBytes:
		return bad(ReasonIDTooLong, fmt.Sprintf("%d bytes, limit %d", len(m.ID), MaxIDBytes))
	case m.Topic == "":
		return bad(ReasonMissingTopic, "")
	case len(m.Topic) > MaxIDBytes:
		return bad(ReasonUnknownTopic, fmt.Sprintf("topic of %d bytes, limit %d", len(m.Topic), MaxIDBytes))
	case len(source) > MaxIDBytes:
		return bad(ReasonInvalidText, fmt.Sprintf("source of %d bytes, limit %d", len(source), MaxIDBytes))
	case len(m.Stream) > MaxStreamBytes:
		return bad(ReasonStreamTooLong, fmt.Sprintf("%d bytes, limit %d", len(m.Stream), MaxStreamBytes))
	case len(m.Body) > in.cfg.MaxBodyBytes:
		return bad(ReasonBodyTooLarge, fmt.Sprintf("%d bytes, limit %d", len(m.Body), in.cfg.MaxBodyBytes))
	case m.Stream != "" && m.Seq < *in.cfg.FirstSeq:
		return bad(ReasonBadSequence, fmt.Sprintf("sequence %d is below the first sequence %d", m.Seq, *in.cfg.FirstSeq))
	case m.Stream != "" && m.Seq == math.MaxInt64:
		return bad(ReasonBadSequence, seqCannotBeFollowed(m.Seq))
	}
	for name, s := range map[string]string{"id": m.ID, "topic": m.Topic, "stream": m.Stream, "source": source} {
		if !utf8.ValidString(s) || strings.ContainsRune(s, 0) {
			return bad(ReasonInvalidText, name+" must be UTF-8 without NUL bytes")
		}
	}
	if in.cfg.StrictTopics && in.handler(m.Topic) == nil {
		return bad(ReasonUnknownTopic, fmt.Sprintf("no handler for topic %q", m.Topic))
	}
	return nil
}

// execer runs a statement on a pool, connection or transaction.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// querier is what store needs from a pool or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func (in *Inbox) store(ctx context.Context, db querier, msgs []Message) (StoreResult, error) {
	res := StoreResult{New: make([]bool, len(msgs)), Late: make([]bool, len(msgs))}
	if len(msgs) == 0 {
		return res, nil
	}
	type key struct{ source, id string }
	first := make(map[key]int, len(msgs)) // a repeated key within the batch is a duplicate of its first
	order := make([]int, 0, len(msgs))
	for i := range msgs {
		if err := in.validate(i, &msgs[i]); err != nil {
			return StoreResult{}, err
		}
		k := key{msgs[i].Source, msgs[i].ID}
		if k.source == "" {
			k.source = in.cfg.Source
		}
		if _, dup := first[k]; !dup {
			first[k] = i
			order = append(order, i)
		}
	}
	// Rows are inserted in key order so concurrent batches take their index
	// locks in the same order and cannot deadlock.
	sort.Slice(order, func(a, b int) bool {
		ka, kb := msgs[order[a]], msgs[order[b]]
		sa, sb := in.sourceOf(&ka), in.sourceOf(&kb)
		if sa != sb {
			return sa < sb
		}
		return ka.ID < kb.ID
	})
	n := len(order)
	sources, ids, topics, streams := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	seqs, headers, bodies := make([]int64, n), make([]string, n), make([][]byte, n)
	for j, i := range order {
		m := &msgs[i]
		sources[j], ids[j], topics[j], streams[j], seqs[j], bodies[j] = in.sourceOf(m), m.ID, m.Topic, m.Stream, m.Seq, m.Body
		h, err := encodeHeaders(m.Headers)
		if err != nil {
			return StoreResult{}, fmt.Errorf("inbox: encode headers of message %q: %w", m.ID, err)
		}
		headers[j] = h
		if bodies[j] == nil {
			bodies[j] = []byte{}
		}
	}
	rows, err := db.Query(ctx, in.sql.store, sources, ids, topics, streams, seqs, headers, bodies, *in.cfg.FirstSeq, in.notifyChannel())
	if err != nil {
		return StoreResult{}, fmt.Errorf("inbox: store batch of %d: %w", n, err)
	}
	stored := map[key]bool{} // the value: stored dead, as a late arrival
	var k key
	var late bool
	if _, err := pgx.ForEachRow(rows, []any{&k.source, &k.id, &late}, func() error { stored[k] = late; return nil }); err != nil {
		return StoreResult{}, fmt.Errorf("inbox: store batch of %d: %w", n, err)
	}
	for i := range msgs {
		k := key{in.sourceOf(&msgs[i]), msgs[i].ID}
		late, ok := stored[k]
		switch {
		case !ok || first[k] != i:
			res.Duplicates++
		case late:
			res.New[i], res.Late[i] = true, true
			res.Stored++
			res.Dead++
		default:
			res.New[i] = true
			res.Stored++
		}
	}
	return res, nil
}

func (in *Inbox) sourceOf(m *Message) string {
	if m.Source == "" {
		return in.cfg.Source
	}
	return m.Source
}

// encodeHeaders makes headers safe for jsonb, which refuses the NUL
// character that an untrusted publisher may put in a header.
func encodeHeaders(h map[string]string) (string, error) {
	if len(h) == 0 {
		return "{}", nil
	}
	clean := make(map[string]string, len(h))
	for k, v := range h {
		clean[strings.ReplaceAll(k, "\x00", "\uFFFD")] = strings.ReplaceAll(v, "\x00", "\uFFFD")
	}
	b, err := json.Marshal(clean)
	return string(b), err
}

// cleanup deletes one batch of processed rows older than the retention
// window and reports how many it deleted.
func (in *Inbox) cleanup(ctx context.Context, db execer) (int64, error) {
	tag, err := db.Exec(ctx, in.sql.cleanup, in.cfg.Retention.Seconds(), in.cfg.CleanupBatch)
	if err != nil {
		return 0, fmt.Errorf("inbox: delete processed rows past retention: %w", err)
	}
	return tag.RowsAffected(), nil
}
