package inbox

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Ordering. A message with a Stream runs only when its Seq equals the
// stream's watermark (next_seq in inbox_streams), and the worker holds the
// stream's row lock from claim to commit, so:
//
//   - two workers never run messages of one stream at once, whatever the
//     number of instances;
//   - the handler of n+1 starts only after n's transaction has committed,
//     because the watermark moves in that same transaction;
//   - a sequence below the watermark is a duplicate, even after its row has
//     been cleaned up.
//
// A stream whose next message is missing waits (a gap). After GapTimeout
// the GapPolicy applies. A message that goes dead parks its stream only;
// other streams go on.

// beginner starts a transaction on a pool or a connection.
type beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// streamWork is one claimed stream and the pending messages loaded for it.
type streamWork struct {
	source, stream string
	nextSeq        int64
	inGap          bool
	msgs           []*streamMessage

	parkReason    string // set when this claim parks the stream
	parkedMessage int64
}

type streamMessage struct {
	*Message
	ready bool // run_at has passed
}

func collectStreams(br pgx.BatchResults) ([]*streamWork, error) {
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	var out []*streamWork
	seen := map[[2]string]bool{}
	var s streamWork
	_, err = pgx.ForEachRow(rows, []any{&s.source, &s.stream, &s.nextSeq, &s.inGap}, func() error {
		// A stream may head the claim twice (a late duplicate at its
		// watermark); it is locked and worked once.
		k := [2]string{s.source, s.stream}
		if !seen[k] {
			seen[k] = true
			w := s
			out = append(out, &w)
		}
		return nil
	})
	return out, err
}

// loadStreams reads each claimed stream's next pending messages, in a
// statement that starts after the locks are held, so it sees everything the
// stream's previous holder committed.
func (in *Inbox) loadStreams(ctx context.Context, tx pgx.Tx, streams []*streamWork) error {
	if len(streams) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	for _, s := range streams {
		b.Queue(in.sql.loadStream, s.source, s.stream, in.cfg.StreamBatchSize)
	}
	br := tx.SendBatch(ctx, b)
	defer br.Close()
	for _, s := range streams {
		rows, err := br.Query()
		if err != nil {
			return fmt.Errorf("load stream %q: %w", s.stream, err)
		}
		s.msgs, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (*streamMessage, error) {
			m := &streamMessage{Message: &Message{Source: s.source, Stream: s.stream}}
			var headers map[string]string
			err := row.Scan(&m.RowID, &m.ID, &m.Topic, &m.Seq, &headers, &m.Body, &m.Attempt, &m.ReceivedAt, &m.ready)
			m.Headers = headers
			m.Attempt++
			return m, err
		})
		if err != nil {
			return fmt.Errorf("load stream %q: %w", s.stream, err)
		}
	}
	return br.Close()
}

// processStream runs a claimed stream's consecutive ready messages in
// sequence order and stops at the first gap, not-yet-due retry or failure.
func (in *Inbox) processStream(ctx context.Context, tx pgx.Tx, s *streamWork, res *results) error {
	res.streams = append(res.streams, s)
	s.inGap = false
	for _, m := range s.msgs {
		switch {
		case m.Seq < s.nextSeq:
			res.duplicates = append(res.duplicates, m.RowID)
			continue
		case m.Seq > s.nextSeq:
			s.inGap = true
			return nil
		case !m.ready || in.handler(m.Topic) == nil:
			return nil
		case !res.starts.mayStart(m.RowID):
			return nil // out of time, or a suspect: it runs in a claim of its own
		}
		f, err := in.process(ctx, tx, m.Message, res)
		if err != nil {
			return err
		}
		if f == nil {
			s.nextSeq++
			continue
		}
		if f.dead {
			s.parkReason = fmt.Sprintf("message %d (seq %d) is dead: %s", m.RowID, m.Seq, firstLine(f.err))
			s.parkedMessage = m.RowID
		}
		return nil
	}
	return nil
}

// sweepGaps finds streams waiting on a missing sequence number that no
// worker has looked at, stamps when the wait began, and applies GapPolicy to
// waits older than GapTimeout. It returns how many streams it changed.
func (in *Inbox) sweepGaps(ctx context.Context, db beginner) (int, error) {
	tx, err := db.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("begin gap sweep: %w", err)
	}
	defer rollback(tx)
	type gap struct {
		source, stream string
		nextSeq, head  int64
		since          *time.Time
		expired, told  bool
	}
	rows, err := tx.Query(ctx, in.sql.findGaps, in.cfg.GapTimeout.Seconds(), 1000)
	if err != nil {
		return 0, fmt.Errorf("find gaps: %w", err)
	}
	var gaps []gap
	var g gap
	if _, err := pgx.ForEachRow(rows, []any{&g.source, &g.stream, &g.nextSeq, &g.head, &g.since, &g.expired, &g.told}, func() error {
		gaps = append(gaps, g)
		return nil
	}); err != nil {
		return 0, fmt.Errorf("find gaps: %w", err)
	}
	b := &pgx.Batch{}
	var skipped int
	for _, g := range gaps {
		missing := fmt.Sprintf("sequence %d..%d", g.nextSeq, g.head-1)
		switch {
		case g.since == nil:
			b.Queue(in.sql.gapStarted, g.source, g.stream)
		case !g.expired:
		case in.cfg.GapPolicy == GapSkip:
			note := fmt.Sprintf("skipped %s at %s after waiting since %s", missing, time.Now().UTC().Format(time.RFC3339), g.since.UTC().Format(time.RFC3339))
			b.Queue(in.sql.gapSkip, g.source, g.stream, g.head, note)
			in.log.warn("inbox: gap timeout: skipping missing messages", "source", g.source, "stream", g.stream, "missing", missing)
			skipped++
		case in.cfg.GapPolicy == GapPark:
			reason := fmt.Sprintf("gap: %s missing since %s", missing, g.since.UTC().Format(time.RFC3339))
			b.Queue(in.sql.park, g.source, g.stream, reason, nil)
			in.log.warn("inbox: gap timeout: stream parked", "source", g.source, "stream", g.stream, "missing", missing)
		case !g.told:
			b.Queue(in.sql.gapReported, g.source, g.stream)
			in.log.warn("inbox: stream still waiting for missing messages", "source", g.source, "stream", g.stream, "missing", missing, "since", g.since)
		}
	}
	if b.Len() == 0 {
		return 0, nil
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return 0, fmt.Errorf("record gaps: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("commit gap sweep: %w", err)
	}
	if skipped > 0 {
		in.wake.signal()
	}
	return b.Len(), nil
}
