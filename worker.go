package inbox

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// A worker claims messages in a transaction of its own and runs their
// handlers inside it. The claim is a row lock: unordered messages are locked
// with FOR UPDATE SKIP LOCKED, ordered ones through their stream's row. If
// the worker, its connection or its process dies, the server rolls the
// transaction back and the locks go with it, so another worker takes the
// messages over at once, and nothing the dead handler wrote survives.
type worker struct {
	in *Inbox
	id int
}

// maxErrorWait caps the pause of a worker whose claims keep failing
// (database down): long enough not to spin, short enough to recover fast.
const maxErrorWait = 30 * time.Second

func (w *worker) run(claimCtx, workCtx context.Context) {
	failures := 0
	for claimCtx.Err() == nil {
		found, err := w.in.work(claimCtx, workCtx)
		w.in.hooks.claimed(found, err)
		if claimCtx.Err() != nil {
			return
		}
		wait := w.in.cfg.PollInterval
		switch {
		case err != nil:
			failures++
			wait = min(time.Duration(failures)*100*time.Millisecond, maxErrorWait)
			w.in.log.warn("inbox worker: batch failed; its messages stay pending", "worker", w.id, "error", err, "retry_in", wait)
		case found > 0:
			failures = 0
			if found >= w.in.cfg.BatchSize {
				w.in.wake.signal() // more may be waiting: bring in another worker
			}
			continue
		default:
			failures = 0
		}
		timer := time.NewTimer(wait)
		select {
		case <-claimCtx.Done():
		case <-w.in.wake.c:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// claim is what one transaction holds.
type claim struct {
	unordered []*Message
	streams   []*streamWork
	starts    starts
	// dbNow is the database's clock at claim time and claimedAt the local
	// clock at the same moment, for latencies measured on the database's
	// clock (received_at is set by it).
	dbNow, claimedAt time.Time
}

// results collects the outcome of every message of a claim, applied in one
// round trip just before commit.
type results struct {
	starts     *starts // which handlers may start; its rows are deleted with the outcomes
	done       []*Message
	duplicates []int64
	failed     []failure
	late       []lateMessage
	streams    []*streamWork
}

// lateMessage arrived for a sequence number its stream had skipped: it
// goes dead, with reason, without a handler run.
type lateMessage struct {
	msg    *Message
	reason string
}

type failure struct {
	msg   *Message
	err   error
	dead  bool
	delay time.Duration
}

// errAbort marks errors after which the claim's transaction is unusable.
type abortError struct {
	msg *Message // the message whose handler was running, if any
	err error
}

func (e *abortError) Error() string { return e.err.Error() }
func (e *abortError) Unwrap() error { return e.err }

// work claims one batch, runs its handlers and commits. It returns how many
// messages it claimed.
func (in *Inbox) work(claimCtx, workCtx context.Context) (int, error) {
	topics := in.topics()
	tx, err := in.pool.Begin(claimCtx)
	if err != nil {
		return 0, fmt.Errorf("begin claim: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			rollback(tx)
		}
	}()
	c, err := in.claim(workCtx, tx, topics)
	if err != nil {
		return 0, err
	}
	n := len(c.unordered)
	for _, s := range c.streams {
		n += len(s.msgs)
	}
	if n == 0 {
		return 0, nil
	}
	// Alone, the wait for the other workers is bounded well inside the
	// claim's server-side idle limit; the gate is released at the latest
	// when the server would end this claim anyway.
	leave, err := in.gate.enter(workCtx, c.starts.solo, in.cfg.HandlerTimeout, in.cfg.BatchBudget+in.cfg.claimLimit())
	if err != nil {
		return n, fmt.Errorf("wait to run a suspect alone: %w", err)
	}
	defer leave()
	if err := in.recordStarts(workCtx, c); err != nil {
		return n, err
	}
	res := results{starts: &c.starts}
	for _, m := range c.unordered {
		if !res.starts.mayStart(m.RowID) {
			break // the rest stay pending, unstarted
		}
		if _, err := in.process(workCtx, tx, m, &res); err != nil {
			return n, in.abort(workCtx, tx, &c.starts, err)
		}
	}
	for _, s := range c.streams {
		if err := in.processStream(workCtx, tx, s, &res); err != nil {
			return n, in.abort(workCtx, tx, &c.starts, err)
		}
	}
	if err := in.apply(workCtx, tx, &res); err != nil {
		return n, in.abort(workCtx, tx, &c.starts, err)
	}
	in.hooks.beforeCommit()
	if err := tx.Commit(workCtx); err != nil {
		// The outcome is unknown; either way nothing is lost: if the commit
		// did not happen the messages are still pending (and suspects, as
		// their attempt starts stay: each runs alone once).
		return n, fmt.Errorf("commit batch of %d: %w", n, err)
	}
	committed = true
	in.report(&res)
	in.tel.committed(&res, c.dbNow, c.claimedAt)
	return n, nil
}

// claim locks what one transaction works on: a suspect alone (see
// attempts.go), or else a batch of unordered messages and of streams. The
// same round trip sets the claim's server-side limits (see limits.go).
func (in *Inbox) claim(ctx context.Context, tx pgx.Tx, topics []string) (*claim, error) {
	b := &pgx.Batch{}
	b.Queue(setClaimLimits, in.cfg.claimLimitArg())
	b.Queue(in.sql.starts.claimSuspect, topics)
	b.Queue(in.sql.starts.claimSuspectStream, topics)
	b.Queue(in.sql.claimUnordered, in.cfg.BatchSize, topics)
	b.Queue(in.sql.claimStreams, in.cfg.StreamsPerClaim, topics)
	b.Queue("SELECT clock_timestamp()")
	br := tx.SendBatch(ctx, b)
	c := &claim{}
	_, err := br.Exec()
	var suspects []*Message
	var suspectStreams []*streamWork
	var deaths []int
	if err == nil {
		var rows pgx.Rows
		if rows, err = br.Query(); err == nil {
			suspects, err = pgx.CollectRows(rows, scanSuspect)
		}
	}
	if err == nil {
		var rows pgx.Rows
		if rows, err = br.Query(); err == nil {
			var s streamWork
			var d int
			var flag bool
			_, err = pgx.ForEachRow(rows, []any{&s.source, &s.stream, &s.nextSeq, &s.inGap, &d, &flag}, func() error {
				w := s
				suspectStreams = append(suspectStreams, &w)
				deaths = append(deaths, d)
				return nil
			})
		}
	}
	if err == nil {
		var rows pgx.Rows
		if rows, err = br.Query(); err == nil {
			c.unordered, err = pgx.CollectRows(rows, scanUnordered)
		}
	}
	if err == nil {
		c.streams, err = collectStreams(br)
	}
	if err == nil {
		err = br.QueryRow().Scan(&c.dbNow)
		c.claimedAt = time.Now()
	}
	if closeErr := br.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		return nil, fmt.Errorf("claim messages: %w", err)
	}
	c.starts.until = c.claimedAt.Add(in.cfg.BatchBudget)
	if len(suspects)+len(suspectStreams) > 0 {
		c.starts.solo = true
		c.starts.deaths = map[int64]int{}
		c.unordered, c.streams = suspects, suspectStreams
		for _, m := range suspects {
			c.starts.deaths[m.RowID] = m.deaths
		}
	}
	if err := in.loadStreams(ctx, tx, c.streams); err != nil {
		return nil, err
	}
	for i, s := range suspectStreams {
		for _, m := range s.msgs {
			if m.Seq == s.nextSeq {
				m.deaths = deaths[i]
				c.starts.deaths[m.RowID] = deaths[i]
			}
		}
	}
	return c, nil
}

func scanUnordered(row pgx.CollectableRow) (*Message, error) {
	m := &Message{}
	var headers map[string]string
	err := row.Scan(&m.RowID, &m.Source, &m.ID, &m.Topic, &headers, &m.Body, &m.Attempt, &m.ReceivedAt)
	m.Headers = headers
	m.Attempt++
	return m, err
}

// process runs one message's handler and records its outcome, returning
// the failure it recorded (nil when the handler succeeded). A non-nil error
// means the transaction is unusable and the batch must be abandoned.
func (in *Inbox) process(ctx context.Context, tx pgx.Tx, m *Message, res *results) (*failure, error) {
	var f failure
	switch {
	case m.deaths >= in.cfg.MaxAttempts:
		f = failure{msg: m, dead: true, err: diedReason(m.deaths)}
	case m.Attempt > in.cfg.MaxAttempts:
		// Earlier attempts broke their transaction (see abort) and were
		// counted outside it; do not run the handler again.
		f = failure{msg: m, dead: true, err: fmt.Errorf("exceeded %d attempts", in.cfg.MaxAttempts)}
	default:
		herr, err := in.runHandler(ctx, tx, m)
		if err != nil {
			return nil, err
		}
		if herr == nil {
			res.done = append(res.done, m)
			return nil, nil
		}
		f = in.judge(m, herr)
	}
	res.failed = append(res.failed, f)
	return &f, nil
}

// runHandler calls the topic's handler inside a savepoint. herr is the
// handler's failure; err means the transaction is lost.
func (in *Inbox) runHandler(ctx context.Context, tx pgx.Tx, m *Message) (herr, err error) {
	h := in.handler(m.Topic)
	if h == nil {
		return fmt.Errorf("no handler registered for topic %q", m.Topic), nil
	}
	htx := &handlerTx{tx: tx}
	hctx, cancel := context.WithTimeout(ctx, in.cfg.HandlerTimeout)
	hctx, span := in.tel.startHandler(hctx, m)
	hctx = withHandlerRun(hctx, m) // an Outbox.Enqueue in the handler derives its IDs from m
	started := time.Now()
	slot := inflightOf(ctx)
	slot.enter(m, tx.Conn().PgConn().Conn())
	herr = callHandler(hctx, h, htx, m)
	slot.leave()
	in.tel.endHandler(hctx, span, m, herr, time.Since(started))
	cancel()
	if ctx.Err() != nil {
		return nil, &abortError{err: fmt.Errorf("stopped while handling message %d: %w", m.RowID, ctx.Err())}
	}
	if err := htx.finish(ctx, herr != nil); err != nil {
		if herr == nil {
			// The handler said success, but its writes failed: a swallowed
			// SQL error, or a lost connection.
			herr = fmt.Errorf("handler returned nil but its transaction failed: %w", err)
		}
		return nil, &abortError{msg: m, err: fmt.Errorf("handle message %d: %w", m.RowID, herr)}
	}
	return herr, nil
}

func callHandler(ctx context.Context, h Handler, tx pgx.Tx, m *Message) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &PanicError{Value: r, Stack: debug.Stack()}
		}
	}()
	return h(ctx, tx, m)
}

// judge turns a handler error into the message's next state.
func (in *Inbox) judge(m *Message, herr error) failure {
	f := failure{msg: m, err: herr}
	var perm *permanentError
	var after *retryAfterError
	switch {
	case errors.As(herr, &perm), m.Attempt >= in.cfg.MaxAttempts:
		f.dead = true
	case errors.As(herr, &after):
		f.delay = after.delay
	default:
		f.delay = in.cfg.retryDelay(m.Attempt)
	}
	return f
}

// apply writes every outcome of the claim in one round trip.
func (in *Inbox) apply(ctx context.Context, tx pgx.Tx, res *results) error {
	b := &pgx.Batch{}
	if len(res.done) > 0 {
		ids := make([]int64, len(res.done))
		for i, m := range res.done {
			ids[i] = m.RowID
		}
		b.Queue(in.sql.markDone, ids)
	}
	if len(res.duplicates) > 0 {
		b.Queue(in.sql.markDuplicate, res.duplicates)
	}
	if len(res.late) > 0 {
		ids, reasons := make([]int64, len(res.late)), make([]string, len(res.late))
		for i, l := range res.late {
			ids[i], reasons[i] = l.msg.RowID, l.reason
		}
		b.Queue(in.sql.markLate, ids, reasons)
	}
	if res.starts != nil && len(res.starts.forget) > 0 {
		b.Queue(in.sql.starts.forget, res.starts.forget)
	}
	for _, f := range res.failed {
		state := "pending"
		if f.dead {
			state = "dead"
		}
		b.Queue(in.sql.markFailed, f.msg.RowID, errorText(f.err), state, f.delay.Seconds())
	}
	keys := make([]streamKey, 0, len(res.streams))
	for _, s := range res.streams {
		b.Queue(in.sql.updateStream, s.source, s.stream, s.nextSeq, s.inGap, s.parkReason, s.parkedMessage)
		keys = append(keys, streamKey{s.source, s.stream})
	}
	in.queueRefresh(b, keys)
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
func (in *Inbox) abort(ctx context.Context, tx pgx.Tx, st *starts, err error) error {
	// The process lives, so no run of this claim killed it.
	in.forgetStarts(st)
	// Release the claim first: the attempt is counted on the message row,
	// which this transaction still locks.
	rollback(tx)
	var ae *abortError
	if !errors.As(err, &ae) || ae.msg == nil || ctx.Err() != nil {
		return err
	}
	m := ae.msg
	f := in.judge(m, ae.err)
	parkReason := ""
	if f.dead && m.Stream != "" {
		parkReason = fmt.Sprintf("message %d (seq %d) is dead: %s", m.RowID, m.Seq, firstLine(f.err))
	}
	recordCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// One implicit transaction: the count, then its stream's head.
	b := &pgx.Batch{}
	var counted int
	b.Queue(in.sql.countBrokenAttempt, m.RowID, m.Attempt-1, errorText(ae.err), f.delay.Seconds(), f.dead, parkReason).
		QueryRow(func(row pgx.Row) error { return row.Scan(&counted) })
	if m.Stream != "" {
		in.queueRefresh(b, []streamKey{{m.Source, m.Stream}})
	}
	rerr := in.pool.SendBatch(recordCtx, b).Close()
	switch {
	case rerr != nil:
		in.log.warn("inbox: could not count attempt of message whose transaction broke", "row_id", m.RowID, "error", rerr)
	case counted == 1 && f.dead:
		res := results{failed: []failure{f}}
		in.report(&res)
		if parkReason != "" {
			in.log.warn("inbox: stream parked", "source", m.Source, "stream", m.Stream, "reason", parkReason)
		}
		in.tel.committed(&res, time.Time{}, time.Time{})
	case counted == 1:
		in.tel.brokenAttempt(m)
	}
	return err
}

// report logs what changed for operators.
func (in *Inbox) report(res *results) {
	for _, f := range res.failed {
		if f.dead {
			in.log.warn("inbox: message is dead", "row_id", f.msg.RowID, "message_id", f.msg.ID, "topic", f.msg.Topic, "attempt", f.msg.Attempt, "error", firstLine(f.err))
		} else {
			in.log.debug("inbox: handler failed; will retry", "row_id", f.msg.RowID, "message_id", f.msg.ID, "topic", f.msg.Topic, "attempt", f.msg.Attempt, "retry_in", f.delay, "error", firstLine(f.err))
		}
	}
	for _, l := range res.late {
		in.log.warn("inbox: message is dead", "row_id", l.msg.RowID, "message_id", l.msg.ID, "topic", l.msg.Topic, "error", l.reason)
	}
	for _, s := range res.streams {
		if s.parkReason != "" {
			in.log.warn("inbox: stream parked", "source", s.source, "stream", s.stream, "reason", s.parkReason)
		}
	}
}

// maxErrorBytes bounds a stored error (panic stacks can be long).
const maxErrorBytes = 8 << 10

func errorText(err error) string {
	s := err.Error()
	if len(s) > maxErrorBytes {
		s = s[:maxErrorBytes] + "…"
	}
	return toValidText(s)
}

func firstLine(err error) string {
	s := err.Error()
	for i, r := range s {
		if r == '\n' {
			return s[:i]
		}
	}
	return s
}

func rollback(tx pgx.Tx) {
	// The context that broke the transaction may be done; roll back on a
	// fresh, bounded one. An error means the connection is gone, and the
	// server has rolled back by itself.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = tx.Rollback(ctx)
}

// toValidText makes s storable in a text column: valid UTF-8, no NUL.
func toValidText(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}
