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

// step is what a stream does with one of its loaded messages, in sequence
// order, given the watermark.
type step int

const (
	stepRun          step = iota // at the watermark: run; success moves the watermark
	stepReplay                   // below it, requeued out of order by an operator: run; the watermark stays
	stepPass                     // below it, out of order but not due or unhandled: leave it for later
	stepLate                     // below it, in a skipped range: dies without running
	stepDuplicate                // below it: already applied
	stepGap                      // above it: the stream waits for a missing message
	stepHold                     // at it but not due, or no handler here: the stream waits
	stepUnfollowable             // at it with the largest sequence number: dies, and parks the stream
)

// nextStep decides what a stream at watermark does with m.
func nextStep(m *streamMessage, watermark int64, handled func(topic string) bool) step {
	switch {
	case m.Seq < watermark && m.outOfOrder:
		// The operator's choice: it runs, and the watermark stays.
		if m.ready && handled(m.Topic) {
			return stepReplay
		}
		return stepPass
	case m.Seq < watermark && m.late != "":
		// Stored while the watermark was skipping its sequence number.
		return stepLate
	case m.Seq < watermark:
		return stepDuplicate
	case m.Seq > watermark:
		return stepGap
	case !m.ready || !handled(m.Topic):
		return stepHold
	case m.Seq == math.MaxInt64:
		// Stored before Store refused it: handled, it would leave the
		// watermark nowhere to go.
		return stepUnfollowable
	}
	return stepRun
}

// park marks s to be parked on m, dead of err, when the claim settles.
func (s *streamWork) park(m *streamMessage, err error) {
	s.parkReason = deadParkReason(m.Message, err)
	s.parkedMessage = m.RowID
}

// deadParkReason is the reason a stream is parked for its dead message m.
func deadParkReason(m *Message, err error) string {
	return fmt.Sprintf("message %d (seq %d) is dead: %s", m.RowID, m.Seq, firstLine(err))
}

// sweepGaps finds streams waiting on a missing sequence number that no
// worker has looked at, stamps when the wait began, and applies GapPolicy to
// waits older than GapTimeout. It returns how many streams it changed. Each
// stream's change is made in a savepoint: one that fails parks its stream,
// saying why, and the sweep goes on with the others.
func (e *engine) sweepGaps(ctx context.Context, db beginner) (int, error) {
	tx, err := db.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("begin gap sweep: %w", err)
	}
	defer rollback(tx)
	if _, err := tx.Exec(ctx, customPlans); err != nil {
		return 0, fmt.Errorf("find gaps: %w", err)
	}
	rows, err := tx.Query(ctx, e.sql.findGaps, e.cfg.GapTimeout.Seconds(), 1000)
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
		act := e.gapAction(g)
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
			e.log.error("inbox: gap sweep failed on a stream; parking it", "source", g.source, "stream", g.stream, "error", failed.err)
			if err := savepoint(ctx, tx, e.sql.parkFailed, g.source, g.stream, reason); err != nil {
				e.log.error("inbox: cannot park the stream the gap sweep failed on", "source", g.source, "stream", g.stream, "error", err)
			}
		default:
			return 0, fmt.Errorf("gap sweep of stream %q: %w", g.stream, err)
		}
	}
	if changed == 0 {
		return 0, nil
	}
	if err := e.refreshHeads(ctx, tx, keys...); err != nil {
		return 0, fmt.Errorf("gap sweep: rewrite stream heads: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("commit gap sweep: %w", err)
	}
	if skipped+repaired > 0 {
		e.wake.signal()
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

func (e *engine) gapAction(g gap) gapStep {
	missing := fmt.Sprintf("sequence %d..%d", g.nextSeq, *g.head-1)
	switch {
	case g.since == nil:
		return gapStep{sql: e.sql.gapStarted, args: []any{g.source, g.stream}, log: func() {}}
	case !g.expired:
		return gapStep{}
	case e.cfg.GapPolicy == GapSkip:
		note := fmt.Sprintf("skipped %s at %s after waiting since %s", missing, time.Now().UTC().Format(time.RFC3339), g.since.UTC().Format(time.RFC3339))
		return gapStep{sql: e.sql.gapSkip, args: []any{g.source, g.stream, g.nextSeq, *g.head, note}, skip: true, log: func() {
			e.log.warn("inbox: gap timeout: skipping missing messages", "source", g.source, "stream", g.stream, "missing", missing)
		}}
	case e.cfg.GapPolicy == GapPark:
		reason := fmt.Sprintf("gap: %s missing since %s", missing, g.since.UTC().Format(time.RFC3339))
		return gapStep{sql: e.sql.park, args: []any{g.source, g.stream, reason, nil}, log: func() {
			e.log.warn("inbox: gap timeout: stream parked", "source", g.source, "stream", g.stream, "missing", missing)
		}}
	case !g.told:
		return gapStep{sql: e.sql.gapReported, args: []any{g.source, g.stream}, log: func() {
			e.log.warn("inbox: stream still waiting for missing messages", "source", g.source, "stream", g.stream, "missing", missing, "since", g.since)
		}}
	}
	return gapStep{}
}

// seqCannotBeFollowed says why the largest sequence number is refused.
func seqCannotBeFollowed(seq int64) string {
	return fmt.Sprintf("sequence %d cannot be followed: it is the largest int64, and the watermark would have to move past it", seq)
}
