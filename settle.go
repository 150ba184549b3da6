package inbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Settling a claim: writing what its runs came to, in its transaction,
// and telling operators and telemetry once it has committed. A claim whose
// transaction broke is settled by abort instead.

// settle writes every outcome of the claim in one round trip: done,
// duplicates, late arrivals, failures (retry or dead), each stream's new
// watermark, gap and park with the rewrite of its head (heads.go), and the
// deletion of its attempt starts.
func (e *engine) settle(ctx context.Context, tx pgx.Tx, out *outcomes) error {
	b := &pgx.Batch{}
	if len(out.done) > 0 {
		ids := make([]int64, len(out.done))
		for i, m := range out.done {
			ids[i] = m.RowID
		}
		b.Queue(e.sql.markDone, ids)
	}
	if len(out.duplicates) > 0 {
		b.Queue(e.sql.markDuplicate, out.duplicates)
	}
	if len(out.late) > 0 {
		ids, reasons := make([]int64, len(out.late)), make([]string, len(out.late))
		for i, l := range out.late {
			ids[i], reasons[i] = l.msg.RowID, l.reason
		}
		b.Queue(e.sql.markLate, ids, reasons)
	}
	if out.starts != nil && len(out.starts.forget) > 0 {
		b.Queue(e.sql.forgetStarts, out.starts.forget)
	}
	for _, f := range out.failed {
		state := StatePending
		if f.dead {
			state = StateDead
		}
		b.Queue(e.sql.markFailed, f.msg.RowID, errorText(f.err), state, f.delay.Seconds())
	}
	keys := make([]streamKey, 0, len(out.streams))
	for _, s := range out.streams {
		b.Queue(e.sql.updateStream, s.source, s.stream, s.nextSeq, s.inGap, s.parkReason, s.parkedMessage)
		keys = append(keys, streamKey{s.source, s.stream})
	}
	e.queueRefresh(b, keys)
	if b.Len() == 0 {
		return nil
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("record outcomes: %w", err)
	}
	return nil
}

// abort handles a lost transaction. Rolling back releases every claim;
// if a handler was running when the transaction broke (a handler
// timeout cancels the connection, for instance), its attempt is counted in a
// statement of its own, so a message that always breaks the transaction
// still ends dead instead of looping forever. A dead verdict (a Permanent
// error, or the last attempt) takes effect there and then, and parks the
// message's stream.
func (e *engine) abort(ctx context.Context, tx pgx.Tx, st *starts, err error) error {
	// The process lives, so no run of this claim killed it.
	e.forgetStarts(st)
	// Release the claim first: the attempt is counted on the message row,
	// which this transaction still locks.
	rollback(tx)
	var ae *abortError
	if !errors.As(err, &ae) || ae.msg == nil || ctx.Err() != nil {
		return err
	}
	m := ae.msg
	f := e.judge(m, ae.err)
	parkReason := ""
	if f.dead && m.Stream != "" {
		parkReason = deadParkReason(m, f.err)
	}
	recordCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// One implicit transaction: the count, then its stream's head.
	b := &pgx.Batch{}
	var counted int
	b.Queue(e.sql.countBrokenAttempt, m.RowID, m.Attempt-1, errorText(ae.err), f.delay.Seconds(), f.dead, parkReason).
		QueryRow(func(row pgx.Row) error { return row.Scan(&counted) })
	if m.Stream != "" {
		e.queueRefresh(b, []streamKey{{m.Source, m.Stream}})
	}
	rerr := e.pool.SendBatch(recordCtx, b).Close()
	switch {
	case rerr != nil:
		e.log.warn("inbox: could not count attempt of message whose transaction broke", "row_id", m.RowID, "error", rerr)
	case counted == 1 && f.dead:
		e.report(&outcomes{failed: []failedRun{f}})
		if parkReason != "" {
			e.log.warn("inbox: stream parked", "source", m.Source, "stream", m.Stream, "reason", parkReason)
		}
		e.tel.counted(batchSummary{dead: []string{m.Topic}})
	case counted == 1:
		e.tel.counted(batchSummary{retried: []string{m.Topic}})
	}
	return err
}

// committed tells operators and telemetry what a committed claim changed.
// dbNow is the database's clock at claim time and claimedAt the local
// clock of the same moment, so the commit on the database's clock is
// dbNow+time.Since(claimedAt).
func (e *engine) committed(out *outcomes, dbNow, claimedAt time.Time) {
	e.report(out)
	sum := batchSummary{doneAt: dbNow.Add(time.Since(claimedAt))}
	for _, m := range out.done {
		sum.processed = append(sum.processed, processedMessage{topic: m.Topic, receivedAt: m.ReceivedAt})
	}
	for _, f := range out.failed {
		if f.dead {
			sum.dead = append(sum.dead, f.msg.Topic)
		} else {
			sum.retried = append(sum.retried, f.msg.Topic)
		}
	}
	for _, l := range out.late {
		sum.dead = append(sum.dead, l.msg.Topic)
	}
	e.tel.counted(sum)
}

// report logs what changed for operators.
func (e *engine) report(out *outcomes) {
	for _, f := range out.failed {
		if f.dead {
			e.log.warn("inbox: message is dead", "row_id", f.msg.RowID, "message_id", f.msg.ID, "topic", f.msg.Topic, "attempt", f.msg.Attempt, "error", firstLine(f.err))
		} else {
			e.log.debug("inbox: handler failed; will retry", "row_id", f.msg.RowID, "message_id", f.msg.ID, "topic", f.msg.Topic, "attempt", f.msg.Attempt, "retry_in", f.delay, "error", firstLine(f.err))
		}
	}
	for _, l := range out.late {
		e.log.warn("inbox: message is dead", "row_id", l.msg.RowID, "message_id", l.msg.ID, "topic", l.msg.Topic, "error", l.reason)
	}
	for _, s := range out.streams {
		if s.parkReason != "" {
			e.log.warn("inbox: stream parked", "source", s.source, "stream", s.stream, "reason", s.parkReason)
		}
	}
}
