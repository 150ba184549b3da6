package inbox

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgtype"
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
func (e *engine) insert(ctx context.Context, db batcher, msgs []Message) ([]fate, error) {
	fates := make([]fate, len(msgs)) // fateDuplicate unless the statement returns the key
	if len(msgs) == 0 {
		return fates, nil
	}
	// The batch in key order, each key once (its first message): rows are
	// inserted in this order so that concurrent batches take their index
	// locks in the same order and cannot deadlock, and the keys the
	// statement returns are found in it by binary search.
	order := make([]int, len(msgs))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return e.compareKeys(&msgs[a], &msgs[b]) })
	order = slices.CompactFunc(order, func(a, b int) bool { return e.compareKeys(&msgs[a], &msgs[b]) == 0 })

	n := len(order)
	sources, ids, topics, streams := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	seqs, headers, bodies := make([]int64, n), make([]string, n), make([][]byte, n)
	var encoded []byte // every message's headers, one after the other
	ends := make([]int, n)
	for j, i := range order {
		m := &msgs[i]
		sources[j], ids[j], topics[j], streams[j], seqs[j], bodies[j] = e.sourceOf(m), m.ID, m.Topic, m.Stream, m.Seq, m.Body
		if bodies[j] == nil {
			bodies[j] = []byte{}
		}
		encoded = appendHeaders(encoded, m.Headers)
		ends[j] = len(encoded)
	}
	all, start := string(encoded), 0 // one string for all: headers[j] are slices of it
	for j, end := range ends {
		headers[j], start = all[start:end], end
	}

	// The returned keys are read in place, not copied.
	var source, id pgtype.DriverBytes
	var late bool
	args := []any{sources, ids, topics, streams, seqs, headers, bodies, *e.cfg.FirstSeq, e.cfg.notifyChannel()}
	err := queryGeneric(ctx, db, e.sql.store, args, []any{&source, &id, &late}, func() error {
		j, found := slices.BinarySearchFunc(order, 0, func(i, _ int) int {
			if c := compareText(e.sourceOf(&msgs[i]), source); c != 0 {
				return c
			}
			return compareText(msgs[i].ID, id)
		})
		if !found {
			return fmt.Errorf("the statement returned key (%q, %q), not in the batch", source, id)
		}
		fates[order[j]] = fateStored
		if late {
			fates[order[j]] = fateLate
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("inbox: store batch of %d: %w", n, err)
	}
	return fates, nil
}

// compareText compares s with the text b, without a copy of b.
func compareText(s string, b []byte) int {
	for i := 0; i < len(s) && i < len(b); i++ {
		if s[i] != b[i] {
			return cmp.Compare(s[i], b[i])
		}
	}
	return cmp.Compare(len(s), len(b))
}

// compareKeys orders messages by their key, (source, ID).
func (e *engine) compareKeys(a, b *Message) int {
	if c := strings.Compare(e.sourceOf(a), e.sourceOf(b)); c != 0 {
		return c
	}
	return strings.Compare(a.ID, b.ID)
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
