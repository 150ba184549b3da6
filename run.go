package inbox

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/jackc/pgx/v5"
)

// outcomes collects what the runs of one claim came to, for settle.go to
// write in one round trip just before commit.
type outcomes struct {
	starts     *starts // which handlers may start; its rows are deleted with the outcomes
	done       []*Message
	duplicates []int64
	failed     []failedRun
	late       []lateMessage
	streams    []*streamWork
	// savepointHeld: a succeeded handler's savepoint is still open (see
	// handlerTx).
	savepointHeld bool
}

// failedRun is a message whose attempt failed, and what follows: a retry
// after delay, or death.
type failedRun struct {
	msg   *Message
	err   error
	dead  bool
	delay time.Duration
}

// lateMessage arrived for a sequence number its stream had skipped: it
// goes dead, with reason, without a handler run.
type lateMessage struct {
	msg    *Message
	reason string
}

// abortError marks errors after which the claim's transaction is unusable.
type abortError struct {
	msg *Message // the message whose handler was running, if any
	err error
}

func (e *abortError) Error() string { return e.err.Error() }
func (e *abortError) Unwrap() error { return e.err }

// runClaim runs the handlers of c's messages in tx: the unordered ones,
// then each stream's in sequence order. An error means tx is unusable.
func (e *engine) runClaim(ctx context.Context, tx pgx.Tx, c *claim) (*outcomes, error) {
	out := &outcomes{starts: &c.starts}
	for _, m := range c.unordered {
		if !out.starts.mayStart(m.RowID) {
			break // the rest stay pending, unstarted
		}
		if _, err := e.runOne(ctx, tx, m, out); err != nil {
			return out, err
		}
	}
	for _, s := range c.streams {
		if err := e.runStream(ctx, tx, s, out); err != nil {
			return out, err
		}
	}
	return out, nil
}

// runStream runs a claimed stream's consecutive ready messages in sequence
// order and stops at the first gap, not-yet-due retry or failure.
func (e *engine) runStream(ctx context.Context, tx pgx.Tx, s *streamWork, out *outcomes) error {
	out.streams = append(out.streams, s)
	s.inGap = false
	for _, m := range s.msgs {
		switch nextStep(m, s.nextSeq, e.handlers.has) {
		case stepReplay:
			// A failure does not park the stream, which has moved on.
			if out.starts.mayStart(m.RowID) {
				if _, err := e.runOne(ctx, tx, m.Message, out); err != nil {
					return err
				}
			}
			continue
		case stepPass:
			continue
		case stepLate:
			out.late = append(out.late, lateMessage{m.Message, m.late})
			continue
		case stepDuplicate:
			out.duplicates = append(out.duplicates, m.RowID)
			continue
		case stepGap:
			s.inGap = true
			return nil
		case stepHold:
			return nil
		case stepUnfollowable:
			f := failedRun{msg: m.Message, dead: true, err: errors.New(seqCannotBeFollowed(m.Seq))}
			out.failed = append(out.failed, f)
			s.park(m, f.err)
			return nil
		}
		if !out.starts.mayStart(m.RowID) {
			return nil // out of time, or a suspect: it runs in a claim of its own
		}
		f, err := e.runOne(ctx, tx, m.Message, out)
		if err != nil {
			return err
		}
		if f == nil {
			s.nextSeq++
			continue
		}
		if f.dead {
			s.park(m, f.err)
		}
		return nil
	}
	return nil
}

// runOne runs one message's handler and records its outcome, returning
// the failure it recorded (nil when the handler succeeded). A non-nil error
// means the transaction is unusable and the batch must be abandoned.
func (e *engine) runOne(ctx context.Context, tx pgx.Tx, m *Message, out *outcomes) (*failedRun, error) {
	var f failedRun
	switch {
	case m.deaths >= e.cfg.MaxAttempts:
		f = failedRun{msg: m, dead: true, err: diedReason(m.deaths)}
	case m.Attempt > e.cfg.MaxAttempts:
		// Earlier attempts broke their transaction (see abort) and were
		// counted outside it; do not run the handler again.
		f = failedRun{msg: m, dead: true, err: fmt.Errorf("exceeded %d attempts", e.cfg.MaxAttempts)}
	default:
		herr, err := e.runHandler(ctx, tx, m, &out.savepointHeld)
		if err != nil {
			return nil, err
		}
		if herr == nil {
			out.done = append(out.done, m)
			return nil, nil
		}
		f = e.judge(m, herr)
	}
	out.failed = append(out.failed, f)
	return &f, nil
}

// runHandler calls the topic's handler inside a savepoint (held: see
// handlerTx). herr is the handler's failure; err means the transaction is
// lost.
func (e *engine) runHandler(ctx context.Context, tx pgx.Tx, m *Message, held *bool) (herr, err error) {
	h := e.handlers.get(m.Topic)
	if h == nil {
		return fmt.Errorf("no handler registered for topic %q", m.Topic), nil
	}
	htx := &handlerTx{tx: tx, held: held}
	hctx, cancel := context.WithTimeout(ctx, e.cfg.HandlerTimeout)
	hctx, span := e.tel.startHandler(hctx, m)
	hctx = withHandlerRun(hctx, m) // an Outbox.Enqueue in the handler derives its IDs from m
	started := time.Now()
	slot := inflightOf(ctx)
	slot.enter(m, tx.Conn().PgConn().Conn())
	herr = callHandler(hctx, h, htx, m)
	slot.leave()
	e.tel.endHandler(hctx, span, m, herr, time.Since(started))
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

// callHandler runs h, turning a panic into a *PanicError.
func callHandler(ctx context.Context, h Handler, tx pgx.Tx, m *Message) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &PanicError{Value: r, Stack: debug.Stack()}
		}
	}()
	return h(ctx, tx, m)
}

// judge turns a handler error into the message's next state.
func (e *engine) judge(m *Message, herr error) failedRun {
	f := failedRun{msg: m, err: herr}
	var perm *permanentError
	var after *retryAfterError
	switch {
	case errors.As(herr, &perm), m.Attempt >= e.cfg.MaxAttempts:
		f.dead = true
	case errors.As(herr, &after):
		f.delay = after.delay
	default:
		f.delay = e.cfg.retryDelay(m.Attempt)
	}
	return f
}
