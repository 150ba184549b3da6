package inbox

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// A worker claims messages in a transaction of its own and runs their
// handlers inside it. The claim is a row lock: unordered messages are locked
// with FOR UPDATE SKIP LOCKED, ordered ones through their stream's row. If
// the worker, its connection or its process dies, the server rolls the
// transaction back and the locks go with it, so another worker takes the
// messages over at once, and nothing the dead handler wrote survives.
//
// Each round goes one way: claim (claim.go), run the handlers (run.go),
// settle the outcomes in the same transaction (settle.go), commit.
type worker struct {
	e  *engine
	id int
}

// maxErrorWait caps the pause of a worker whose claims keep failing
// (database down): long enough not to spin, short enough to recover fast.
const maxErrorWait = 30 * time.Second

// loop works rounds until claimCtx ends; workCtx cancels handlers in flight.
func (w *worker) loop(claimCtx, workCtx context.Context) {
	e := w.e
	failures := 0
	for claimCtx.Err() == nil {
		found, err := e.round(claimCtx, workCtx)
		if claimCtx.Err() != nil {
			return // stopping: a claim cut short by Stop is no failure
		}
		e.hooks.claimed(found, err)
		wait := e.cfg.PollInterval
		switch {
		case err != nil:
			failures++
			wait = min(time.Duration(failures)*100*time.Millisecond, maxErrorWait)
			e.log.warn("inbox worker: batch failed; its messages stay pending", "worker", w.id, "error", err, "retry_in", wait)
		case found > 0:
			failures = 0
			if found >= e.cfg.BatchSize {
				e.wake.signal() // more may be waiting: bring in another worker
			}
			continue
		default:
			failures = 0
		}
		timer := time.NewTimer(wait)
		select {
		case <-claimCtx.Done():
		case <-e.wake.c:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// round claims one batch, runs its handlers, settles their outcomes and
// commits. It returns how many messages it claimed.
func (e *engine) round(claimCtx, workCtx context.Context) (int, error) {
	topics := e.handlers.topics()
	tx, err := e.pool.Begin(claimCtx)
	if err != nil {
		return 0, fmt.Errorf("begin claim: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			rollback(tx)
		}
	}()
	c, err := e.claim(workCtx, tx, topics)
	if err != nil {
		return 0, err
	}
	n := c.size()
	if n == 0 {
		return 0, nil
	}
	// Alone, the wait for the other workers is bounded well inside the
	// claim's server-side idle limit; the gate is released at the latest
	// when the server would end this claim anyway.
	leave, err := e.gate.enter(workCtx, c.starts.solo, e.cfg.HandlerTimeout, e.cfg.BatchBudget+e.cfg.claimLimit())
	if err != nil {
		return n, fmt.Errorf("wait to run a suspect alone: %w", err)
	}
	defer leave()
	if err := e.recordStarts(workCtx, &c.starts, c.candidates(e.handlers.has)); err != nil {
		return n, err
	}
	out, err := e.runClaim(workCtx, tx, c)
	if err == nil {
		err = e.settle(workCtx, tx, out)
	}
	if err != nil {
		return n, e.abort(workCtx, tx, &c.starts, err)
	}
	e.hooks.beforeCommit()
	if err := tx.Commit(workCtx); err != nil {
		// The outcome is unknown; either way nothing is lost: if the commit
		// did not happen the messages are still pending (and suspects, as
		// their attempt starts stay: each runs alone once).
		return n, fmt.Errorf("commit batch of %d: %w", n, err)
	}
	committed = true
	e.committed(out, c.dbNow, c.claimedAt)
	return n, nil
}

// crew is one Start..Stop cycle's goroutines (workers, listener,
// maintenance) and their controls.
type crew struct {
	stopClaiming context.CancelFunc // workers finish their transaction and exit
	cancelWork   context.CancelFunc // in-flight handlers are cancelled
	inflight     []*inflight        // each worker's running handler
	done         sync.WaitGroup
}

// start launches the workers, the LISTEN wake-up and the maintenance loop.
func (e *engine) start() *crew {
	e.side.open()
	claimCtx, stopClaiming := context.WithCancel(context.Background())
	workCtx, cancelWork := context.WithCancel(context.Background())
	c := &crew{stopClaiming: stopClaiming, cancelWork: cancelWork}
	for i := 0; i < e.cfg.Workers; i++ {
		w := &worker{e: e, id: i}
		f := &inflight{}
		c.inflight = append(c.inflight, f)
		c.goRun(func() { w.loop(claimCtx, withInflight(workCtx, f)) })
	}
	if !e.cfg.DisableListen {
		c.goRun(func() { e.listen(claimCtx) })
	}
	c.goRun(func() { e.maintain(claimCtx) })
	return c
}

func (c *crew) goRun(fn func()) {
	c.done.Add(1)
	go func() {
		defer c.done.Done()
		fn()
	}()
}

// stop drains the crew (see Inbox.Stop). It returns ctx's error if the
// handlers in flight had to be cancelled.
func (e *engine) stop(ctx context.Context, c *crew) error {
	c.stopClaiming()
	exited := make(chan struct{})
	go func() { c.done.Wait(); close(exited) }()
	select {
	case <-exited:
		c.cancelWork()
		e.side.close()
		return nil
	case <-ctx.Done():
		c.cancelWork()
		for _, f := range c.inflight {
			if m := f.release(); m != nil {
				e.log.error("inbox: handler still running at Stop's deadline; closed its connection to release its claim",
					"row_id", m.RowID, "message_id", m.ID, "topic", m.Topic)
			}
		}
		// A worker that aborts after this cannot clear its claim's attempt
		// starts: those messages then run alone once each, later.
		e.side.close()
		return ctx.Err()
	}
}
