package inbox

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Deduplication. A message is a duplicate when its key, (Source, ID), is
// stored already: the unique index decides, in the statement that inserts
// (see sql_store.go). A message of a stream is also a duplicate when its
// sequence number is below the stream's watermark (ordering.go), even after
// its row is gone, unless the watermark skipped it: skipped ranges are kept
// in inbox_skips, and a message arriving late for one is stored dead. Keys
// of processed messages are kept for Config.Retention, then cleaned up.

// fate is what storing did with one message.
type fate int

const (
	fateDuplicate fate = iota // not stored: its key is, or its stream applied its sequence number
	fateStored                // stored, pending
	fateLate                  // stored dead: its stream had skipped its sequence number
)

// insert stores a batch in one statement. The message-ID key (source, ID)
// makes a message stored before, or earlier in the batch, a duplicate; the
// statement also makes a sequence number below its stream's watermark one,
// unless the watermark skipped it (a late arrival, stored dead).
// It returns each message's fate, in the order of msgs.
func (e *engine) insert(ctx context.Context, db querier, msgs []Message) ([]fate, error) {
	fates := make([]fate, len(msgs))
	if len(msgs) == 0 {
		return fates, nil
	}
	type key struct{ source, id string }
	first := make(map[key]int, len(msgs)) // a repeated key within the batch is a duplicate of its first
	order := make([]int, 0, len(msgs))
	for i := range msgs {
		k := key{msgs[i].Source, msgs[i].ID}
		if k.source == "" {
			k.source = e.cfg.Source
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
		sa, sb := e.sourceOf(&ka), e.sourceOf(&kb)
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
		sources[j], ids[j], topics[j], streams[j], seqs[j], bodies[j] = e.sourceOf(m), m.ID, m.Topic, m.Stream, m.Seq, m.Body
		h, err := encodeHeaders(m.Headers)
		if err != nil {
			return nil, fmt.Errorf("inbox: encode headers of message %q: %w", m.ID, err)
		}
		headers[j] = h
		if bodies[j] == nil {
			bodies[j] = []byte{}
		}
	}
	rows, err := db.Query(ctx, e.sql.store, sources, ids, topics, streams, seqs, headers, bodies, *e.cfg.FirstSeq, e.cfg.notifyChannel())
	if err != nil {
		return nil, fmt.Errorf("inbox: store batch of %d: %w", n, err)
	}
	stored := map[key]bool{} // the value: stored dead, as a late arrival
	var k key
	var late bool
	if _, err := pgx.ForEachRow(rows, []any{&k.source, &k.id, &late}, func() error { stored[k] = late; return nil }); err != nil {
		return nil, fmt.Errorf("inbox: store batch of %d: %w", n, err)
	}
	for i := range msgs {
		k := key{e.sourceOf(&msgs[i]), msgs[i].ID}
		late, ok := stored[k]
		switch {
		case !ok || first[k] != i:
			fates[i] = fateDuplicate
		case late:
			fates[i] = fateLate
		default:
			fates[i] = fateStored
		}
	}
	return fates, nil
}

// cleanup deletes one batch of processed rows older than the retention
// window and reports how many it deleted.
func (e *engine) cleanup(ctx context.Context, db beginner) (int64, error) {
	tag, err := execInIndexOrder(ctx, db, e.sql.cleanup, e.cfg.Retention.Seconds(), e.cfg.CleanupBatch)
	if err != nil {
		return 0, fmt.Errorf("inbox: delete processed rows past retention: %w", err)
	}
	return tag.RowsAffected(), nil
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
