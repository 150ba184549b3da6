package amqp

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/inboxkit/inbox"
)

// The pipeline. The session's goroutine gathers deliveries into batches and
// hands each full batch, or a lingered one when no other is out (see
// launch), to a committer goroutine of its own, which stores it; up to
// Config.BatchesInFlight batches are out at once, so the broker's next
// deliveries arrive while earlier batches commit. The
// committers never touch the channel: they hand each batch back, and the
// session's goroutine acks in delivery-tag order, a batch only once it and
// every batch before it committed. A batch whose store fails holds the acks
// of every later one until its retry succeeds; if the session ends first,
// every batch not acked is dropped with it and the broker redelivers them
// (those already stored come back as duplicates).

// batch is a run of consecutive deliveries stored in one Store call.
type batch struct {
	items []pending
	msgs  []inbox.Message
	n     int // deliveries at launch; items shrinks when Store refuses one

	// Set by the committer before it hands the batch back.
	refused []refusal // deliveries Store refused alone, taken out of items
	err     error     // nil: committed, or nothing was left to store

	back bool // the committer handed it back (session goroutine only)
}

// refusal is a delivery Store refused, to be rejected before its batch's
// ack covers its tag.
type refusal struct {
	p   pending
	rej *rejection
}

// pipeline is the session's state for batches.
type pipeline struct {
	gather   batch // the batch being gathered
	lingered bool  // gather waited out its linger: launch it once no batch is out
	linger   *time.Timer

	inflight []*batch    // launched, in delivery order, not acked yet
	done     chan *batch // batches the committers hand back
	wg       sync.WaitGroup

	run          context.Context    // Run's: once it ends, attempts are cut off at stopPipeline
	attempts     context.Context    // the store attempts'
	cutOff       context.CancelFunc // ends attempts
	quit         context.Context    // ended: committers make no further attempt
	stopRetrying context.CancelFunc
}

// startPipeline readies the session for batches. The store attempts do not
// end with ctx: on shutdown the batches in flight are finished (see finish).
func (s *session) startPipeline(ctx context.Context) {
	s.linger = time.NewTimer(s.r.cfg.BatchLinger)
	s.linger.Stop()
	s.gather = batch{items: make([]pending, 0, s.r.cfg.BatchSize), msgs: make([]inbox.Message, 0, s.r.cfg.BatchSize)}
	s.done = make(chan *batch, s.r.cfg.BatchesInFlight) // never blocks a committer
	s.run = ctx
	s.attempts, s.cutOff = context.WithCancel(context.WithoutCancel(ctx))
	s.quit, s.stopRetrying = context.WithCancel(context.Background())
}

// stopPipeline makes the committers give up and waits for them; their
// batches are dropped unacked. A store attempt under way is left to finish
// (within StoreTimeout), so that a commit is not turned into one of unknown
// outcome, unless Run's context has ended: shutdown has waited its
// ShutdownTimeout already (see finish).
func (s *session) stopPipeline() {
	if s.cutOff == nil {
		return
	}
	s.linger.Stop()
	s.stopRetrying()
	if s.run.Err() != nil {
		s.cutOff()
	}
	s.wg.Wait()
	s.cutOff()
}

// full reports whether the batch being gathered is full and waits for a
// free slot: until then the session reads no more deliveries.
func (s *session) full() bool {
	return len(s.gather.items) >= s.r.cfg.BatchSize
}

// launch hands the gathered batch to a committer when it may go: while
// fewer than Config.BatchesInFlight batches are out, a full batch at once,
// one that is not full once it has lingered and no batch is out. That is
// group commit: while a batch is being stored the next keeps gathering, so
// a busy receiver stores fewer, larger batches (the database's cost is
// mostly per statement and per commit), and a quiet one waits for no more
// than its linger. A lingered batch goes when the store under way returns
// (see consume).
func (s *session) launch() {
	cfg := s.r.cfg
	switch {
	case len(s.gather.items) == 0:
		s.lingered = false
		return
	case len(s.inflight) >= cfg.BatchesInFlight:
		return
	case !s.full() && (!s.lingered || len(s.inflight) > 0):
		return
	}
	s.linger.Stop()
	s.lingered = false
	b := &batch{items: s.gather.items, msgs: s.gather.msgs, n: len(s.gather.items)}
	s.gather = batch{items: make([]pending, 0, cfg.BatchSize), msgs: make([]inbox.Message, 0, cfg.BatchSize)}
	s.inflight = append(s.inflight, b)
	s.wg.Add(1)
	go s.commit(b)
}

// commit runs on a committer goroutine: it stores b and hands it back.
func (s *session) commit(b *batch) {
	defer s.wg.Done()
	b.err = s.store(b)
	s.done <- b
}

// store stores b, retrying with backoff while it fails, until it commits
// or the pipeline stops. A message that Store refuses alone (a handler
// unregistered since Validate, say) is taken out to be rejected, and the
// rest are stored without it.
func (s *session) store(b *batch) error {
	cfg := s.r.cfg
	var retry *cappedBackOff
	for attempt := 1; len(b.items) > 0; attempt++ {
		res, err := s.storeOnce(b.msgs)
		if err == nil {
			s.r.stats.stored.Add(uint64(res.Stored))
			s.r.stats.duplicates.Add(uint64(res.Duplicates))
			s.r.log.Debug("stored batch", "deliveries", len(b.items), "new", res.Stored, "duplicates", res.Duplicates, "session", s.gen)
			return nil
		}
		if s.quit.Err() != nil {
			return err
		}
		var inv *inbox.InvalidMessageError
		if errors.As(err, &inv) && inv.Index >= 0 && inv.Index < len(b.items) {
			b.refused = append(b.refused, refusal{b.items[inv.Index], &rejection{reason: inv.Reason, detail: inv.Detail}})
			b.items = slices.Delete(b.items, inv.Index, inv.Index+1)
			b.msgs = slices.Delete(b.msgs, inv.Index, inv.Index+1)
			continue
		}
		s.r.stats.storeFailures.Add(1)
		if retry == nil {
			bo := newBackOff(cfg.StoreRetryInitial, cfg.StoreRetryMax)
			retry = &bo
		}
		wait := retry.NextBackOff()
		s.r.log.Warn("could not store batch; its deliveries, and those of every later batch, stay unacked and the store is retried",
			"deliveries", len(b.items), "attempt", attempt, "retry_in", wait, "error", err, "session", s.gen)
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-s.quit.Done():
			timer.Stop()
			return err
		}
	}
	return nil
}

// storeOnce makes one attempt, within StoreTimeout. It does not end with
// Run's context: a batch in flight is finished on shutdown.
func (s *session) storeOnce(msgs []inbox.Message) (inbox.StoreResult, error) {
	ctx, cancel := context.WithTimeout(s.attempts, s.r.cfg.StoreTimeout)
	defer cancel()
	return s.r.store.Store(ctx, msgs...)
}

// committed takes back a batch from its committer and acks what can be
// acked.
func (s *session) committed(b *batch) error {
	b.back = true
	return s.ackCommitted()
}

// ackCommitted acks the batches at the head of the line that committed,
// with one multiple ack on the last stored tag among them, after rejecting
// the deliveries Store refused among them: their tags lie below that one. It
// stops at the first batch that is still out, or failed, so no ack ever
// covers a delivery that is not stored.
func (s *session) ackCommitted() error {
	var last uint64
	n, k := 0, 0
	for _, b := range s.inflight {
		if !b.back || b.err != nil {
			break
		}
		k++
		for _, f := range b.refused {
			s.reject(f.p.d, f.p.id, f.rej)
		}
		if len(b.items) > 0 {
			last = b.items[len(b.items)-1].d.DeliveryTag
			n += len(b.items)
		}
	}
	clear(s.inflight[:k]) // drop the bodies
	s.inflight = s.inflight[k:]
	if n == 0 {
		return nil
	}
	return s.ack(last, n)
}

// ack acknowledges the n stored deliveries up to last with one multiple
// ack.
func (s *session) ack(last uint64, n int) error {
	if err := s.settle.Ack(last, true); err != nil {
		// The rows are committed, so the redelivery is a duplicate.
		return fmt.Errorf("ack %d stored deliveries: %w", n, s.whyClosed(err))
	}
	s.acked = true
	s.r.stats.acked.Add(uint64(n))
	s.r.log.Debug("acked stored deliveries", "deliveries", n, "last_tag", last, "session", s.gen)
	if s.careful {
		s.careful = false
		err := s.link.bounded(context.Background(), s.r.cfg.OpenTimeout, "restore the prefetch", func() error {
			return s.ch.Qos(s.r.cfg.Prefetch, 0, false)
		})
		if err != nil {
			return s.whyClosed(err)
		}
		s.r.log.Info("the delivery after the undecodable one was stored; back to the full prefetch", "session", s.gen)
	}
	return nil
}

// errNotStored ends a shutdown whose batches could not all be stored in
// time.
var errNotStored = errors.New("batches not stored before the shutdown timeout")

// finish stores the batch in hand and waits for every batch in flight,
// acking them in order as they commit, for as long as the channel lives.
// Once ctx is cancelled it waits at most Config.ShutdownTimeout; the
// batches still out then are dropped unacked, for the broker to redeliver.
func (s *session) finish(ctx context.Context) error {
	stop := ctx.Done()
	var deadline <-chan time.Time
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		s.lingered = true
		s.launch()
		if len(s.inflight) == 0 {
			return nil
		}
		select {
		case <-stop:
			stop = nil
			timer = time.NewTimer(s.r.cfg.ShutdownTimeout)
			deadline = timer.C
		case <-deadline:
			n := len(s.gather.items)
			for _, b := range s.inflight {
				n += b.n // not items: a committer may be changing them
			}
			s.r.log.Warn("could not store every batch in flight before the shutdown timeout; their deliveries stay unacked for redelivery",
				"batches", len(s.inflight), "deliveries", n, "session", s.gen)
			return fmt.Errorf("%d deliveries: %w", n, errNotStored)
		case e := <-s.connClosed:
			return lost("connection", e)
		case e := <-s.chClosed:
			return lost("channel", e)
		case b := <-s.done:
			if err := s.committed(b); err != nil {
				return err
			}
		}
	}
}
