package inbox

import (
	"context"
	"errors"
	"fmt"
	"math"
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
//     been cleaned up, unless the watermark skipped it (GapSkip, SkipStream):
//     skipped ranges are recorded in inbox_skips, and a message arriving
//     late for one is kept as dead, since it was never applied;
//   - the largest sequence number, math.MaxInt64, is refused at Store: no
//     watermark could follow it.
//
// A stream whose next message is missing waits (a gap), from when the
// watermark reached it. After GapTimeout the GapPolicy applies. A message
// that goes dead parks its stream only; other streams go on. An operator
// may requeue a dead message below the watermark to run out of order
// (OutOfOrder): it runs without moving the watermark.

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
	ready      bool   // run_at has passed
	outOfOrder bool   // requeued by an operator to run below the watermark
	late       string // below the watermark in a skipped range: why it dies
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
		b.Queue(in.sql.loadStream, s.source, s.stream, in.cfg.StreamBatchSize, s.nextSeq)
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
			err := row.Scan(&m.RowID, &m.ID, &m.Topic, &m.Seq, &headers, &m.Body, &m.Attempt, &m.ReceivedAt, &m.ready,
				&m.outOfOrder, &m.late)
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
		case m.Seq < s.nextSeq && m.outOfOrder:
			// The operator's choice: it runs, and the watermark stays. A
			// failure does not park the stream, which has moved on.
			if m.ready && in.handler(m.Topic) != nil && res.starts.mayStart(m.RowID) {
				if _, err := in.process(ctx, tx, m.Message, res); err != nil {
					return err
				}
			}
			continue
		case m.Seq < s.nextSeq && m.late != "":
			// Stored while the watermark was skipping its sequence number.
			res.late = append(res.late, lateMessage{m.Message, m.late})
			continue
		case m.Seq < s.nextSeq:
			res.duplicates = append(res.duplicates, m.RowID)
			continue
		case m.Seq > s.nextSeq:
			s.inGap = true
			return nil
		case !m.ready || in.handler(m.Topic) == nil:
			return nil
		case m.Seq == math.MaxInt64:
			// Stored before Store refused it: handled, it would leave the
			// watermark nowhere to go.
			f := failure{msg: m.Message, dead: true, err: errors.New(seqCannotBeFollowed(m.Seq))}
			res.failed = append(res.failed, f)
			s.parkReason = fmt.Sprintf("message %d (seq %d) is dead: %s", m.RowID, m.Seq, f.err)
			s.parkedMessage = m.RowID
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
// waits older than GapTimeout. It returns how many streams it changed. Each
// stream's change is made in a savepoint: one that fails parks its stream,
// saying why, and the sweep goes on with the others.
func (in *Inbox) sweepGaps(ctx context.Context, db beginner) (int, error) {
	tx, err := db.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("begin gap sweep: %w", err)
	}
	defer rollback(tx)
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
	changed, skipped, repaired := 0, 0, 0
	keys := make([]streamKey, 0, len(gaps))
	for _, g := range gaps {
		keys = append(keys, streamKey{g.source, g.stream})
		if g.head == nil || *g.head <= g.nextSeq {
			// Its head row was out of date (no gap): the rewrite below
			// repairs it.
			changed++
			repaired++
			continue
		}
		act := in.gapAction(g)
		if act.sql == "" {
			continue
		}
		changed++
		err := savepoint(ctx, tx, act.sql, act.args...)
		var failed *savepointError
		switch {
		case err == nil:
			act.log()
			if act.skip {
				skipped++
			}
		case errors.As(err, &failed):
			reason := "gap sweep failed: " + firstLine(failed.err)
			in.log.error("inbox: gap sweep failed on a stream; parking it", "source", g.source, "stream", g.stream, "error", failed.err)
			if err := savepoint(ctx, tx, in.sql.parkFailed, g.source, g.stream, reason); err != nil {
				in.log.error("inbox: cannot park the stream the gap sweep failed on", "source", g.source, "stream", g.stream, "error", err)
			}
		default:
			return 0, fmt.Errorf("gap sweep of stream %q: %w", g.stream, err)
		}
	}
	if changed == 0 {
		return 0, nil
	}
	if err := in.refreshHeads(ctx, tx, keys...); err != nil {
		return 0, fmt.Errorf("gap sweep: rewrite stream heads: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("commit gap sweep: %w", err)
	}
	if skipped+repaired > 0 {
		in.wake.signal()
	}
	return changed, nil
}

// gap is a stream found waiting on a missing sequence number.
type gap struct {
	source, stream string
	nextSeq        int64
	head           *int64 // lowest pending sequence number, if any
	since          *time.Time
	expired, told  bool
}

// gapStep is what the sweep does to one gap: a statement, and what to log
// once it has succeeded.
type gapStep struct {
	sql  string
	args []any
	skip bool
	log  func()
}

func (in *Inbox) gapAction(g gap) gapStep {
	missing := fmt.Sprintf("sequence %d..%d", g.nextSeq, *g.head-1)
	switch {
	case g.since == nil:
		return gapStep{sql: in.sql.gapStarted, args: []any{g.source, g.stream}, log: func() {}}
	case !g.expired:
		return gapStep{}
	case in.cfg.GapPolicy == GapSkip:
		note := fmt.Sprintf("skipped %s at %s after waiting since %s", missing, time.Now().UTC().Format(time.RFC3339), g.since.UTC().Format(time.RFC3339))
		return gapStep{sql: in.sql.gapSkip, args: []any{g.source, g.stream, g.nextSeq, *g.head, note}, skip: true, log: func() {
			in.log.warn("inbox: gap timeout: skipping missing messages", "source", g.source, "stream", g.stream, "missing", missing)
		}}
	case in.cfg.GapPolicy == GapPark:
		reason := fmt.Sprintf("gap: %s missing since %s", missing, g.since.UTC().Format(time.RFC3339))
		return gapStep{sql: in.sql.park, args: []any{g.source, g.stream, reason, nil}, log: func() {
			in.log.warn("inbox: gap timeout: stream parked", "source", g.source, "stream", g.stream, "missing", missing)
		}}
	case !g.told:
		return gapStep{sql: in.sql.gapReported, args: []any{g.source, g.stream}, log: func() {
			in.log.warn("inbox: stream still waiting for missing messages", "source", g.source, "stream", g.stream, "missing", missing, "since", g.since)
		}}
	}
	return gapStep{}
}

// savepointError is the failure of the statement a savepoint guarded; the
// transaction is still usable.
type savepointError struct{ err error }

func (e *savepointError) Error() string { return e.err.Error() }
func (e *savepointError) Unwrap() error { return e.err }

// savepoint runs one statement in a savepoint, in one round trip when it
// succeeds. Its failure is a *savepointError and leaves tx usable; any
// other error means tx is lost.
func savepoint(ctx context.Context, tx pgx.Tx, sql string, args ...any) error {
	b := &pgx.Batch{}
	b.Queue("SAVEPOINT inbox_step")
	b.Queue(sql, args...)
	b.Queue("RELEASE SAVEPOINT inbox_step")
	err := tx.SendBatch(ctx, b).Close()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return err
	}
	if _, rerr := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT inbox_step"); rerr != nil {
		return errors.Join(err, rerr)
	}
	return &savepointError{err: err}
}

// seqCannotBeFollowed says why the largest sequence number is refused.
func seqCannotBeFollowed(seq int64) string {
	return fmt.Sprintf("sequence %d cannot be followed: it is the largest int64, and the watermark would have to move past it", seq)
}
