package amqp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/inboxkit/inbox"
)

// ledger plays the broker's side of one channel: it knows which tags' messages
// are committed and fails the test on any ack that covers a tag that is not,
// or on settling a tag twice.
type ledger struct {
	t         *testing.T
	mu        sync.Mutex
	committed map[uint64]bool
	settled   map[uint64]string // "ack" or "reject"
	acks      []uint64          // tags of the multiple acks, in order
}

func newLedger(t *testing.T) *ledger {
	return &ledger{t: t, committed: map[uint64]bool{}, settled: map[uint64]string{}}
}

func (l *ledger) Ack(tag uint64, multiple bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !multiple {
		l.t.Errorf("single ack of tag %d; want only multiple acks here", tag)
	}
	if l.settled[tag] != "" {
		l.t.Errorf("ack of tag %d, already settled (%s): the broker closes the channel", tag, l.settled[tag])
	}
	for t := uint64(1); t <= tag; t++ {
		if l.settled[t] != "" {
			continue
		}
		if !l.committed[t] {
			l.t.Errorf("ack up to tag %d covers tag %d, whose message is not committed", tag, t)
		}
		l.settled[t] = "ack"
	}
	l.acks = append(l.acks, tag)
	return nil
}

func (l *ledger) Reject(tag uint64, requeue bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.settled[tag] != "" {
		l.t.Errorf("reject of tag %d, already settled (%s)", tag, l.settled[tag])
	}
	l.settled[tag] = "reject"
	return nil
}

func (l *ledger) commit(ids []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, id := range ids {
		tag, _ := strconv.ParseUint(strings.TrimPrefix(id, "m"), 10, 64)
		l.committed[tag] = true
	}
}

func (l *ledger) snapshot() (settled map[uint64]string, acks []uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	settled = make(map[uint64]string, len(l.settled))
	for k, v := range l.settled {
		settled[k] = v
	}
	return settled, slices.Clone(l.acks)
}

// storeCall is one Store call held until the test gives its outcome.
type storeCall struct {
	ids     []string
	outcome chan error // nil: commit; an *inbox.InvalidMessageError or another error: fail
}

// heldStore holds every Store call for the test to complete, in any order.
type heldStore struct {
	calls  chan *storeCall
	ledger *ledger
}

func (h *heldStore) Validate(m inbox.Message) error {
	if m.ID == "" {
		return &inbox.InvalidMessageError{Reason: inbox.ReasonMissingID}
	}
	return nil
}

func (h *heldStore) Store(ctx context.Context, msgs ...inbox.Message) (inbox.StoreResult, error) {
	c := &storeCall{outcome: make(chan error, 1)}
	for _, m := range msgs {
		c.ids = append(c.ids, m.ID)
	}
	select {
	case h.calls <- c:
	case <-ctx.Done():
		return inbox.StoreResult{}, ctx.Err()
	}
	select {
	case err := <-c.outcome:
		if err != nil {
			return inbox.StoreResult{}, err
		}
		h.ledger.commit(c.ids)
		return inbox.StoreResult{Stored: len(msgs)}, nil
	case <-ctx.Done():
		return inbox.StoreResult{}, ctx.Err()
	}
}

// pipelineRig runs a session's consume loop on fake deliveries, a held
// store and a ledger in place of the channel: no broker needed.
type pipelineRig struct {
	t        *testing.T
	store    *heldStore
	ledger   *ledger
	s        *session
	cancel   context.CancelFunc
	ended    chan struct{} // closed when consume has returned, with err
	err      error
	bad      []uint64 // tags of deliveries without an ID
	goodSent int
	feed     chan amqp091.Delivery // the session's deliveries
}

// newPipelineRig delivers good deliveries (IDs m<tag>) with a bad one (no
// ID) after every seventh, in batches of 5, at most 4 in flight.
func newPipelineRig(t *testing.T, good int, tune ...func(*Config)) *pipelineRig {
	l := newLedger(t)
	store := &heldStore{calls: make(chan *storeCall), ledger: l}
	cfg := Config{
		URL: "amqp://localhost/", Queue: "q", Prefetch: 100, BatchSize: 5, BatchesInFlight: 4,
		BatchLinger:       time.Hour, // batches leave full, so the test knows them
		StoreRetryInitial: time.Millisecond, StoreRetryMax: time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	for _, f := range tune {
		f(&cfg)
	}
	r, err := NewReceiver(store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	rig := &pipelineRig{t: t, store: store, ledger: l, ended: make(chan struct{})}
	rig.s = &session{r: r, gen: 1, settle: l, connClosed: make(chan *amqp091.Error, 1), chClosed: make(chan *amqp091.Error, 1)}
	var ds []amqp091.Delivery
	for tag := uint64(1); rig.goodSent < good; tag++ {
		d := amqp091.Delivery{DeliveryTag: tag, Type: "t", MessageId: fmt.Sprintf("m%d", tag)}
		if tag%8 == 0 {
			d.MessageId = ""
			rig.bad = append(rig.bad, tag)
		} else {
			rig.goodSent++
		}
		ds = append(ds, d)
	}
	rig.feed = make(chan amqp091.Delivery, len(ds)+16)
	for _, d := range ds {
		rig.feed <- d
	}
	ctx, cancel := context.WithCancel(context.Background())
	rig.cancel = cancel
	go func() {
		rig.err = rig.s.consume(ctx, rig.feed)
		rig.s.stopPipeline()
		close(rig.ended)
	}()
	t.Cleanup(func() {
		cancel()
		rig.end(errors.New("test over"))
	})
	return rig
}

// end fails every store call until the session has ended, and returns what
// consume returned.
func (rig *pipelineRig) end(fail error) error {
	for {
		select {
		case c := <-rig.store.calls:
			c.outcome <- fail
		case <-rig.ended:
			return rig.err
		}
	}
}

// next waits for n Store calls and returns them by first tag, as A, B, ...
func (rig *pipelineRig) next(n int) []*storeCall {
	rig.t.Helper()
	var calls []*storeCall
	timeout := time.After(30 * time.Second)
	for len(calls) < n {
		select {
		case c := <-rig.store.calls:
			calls = append(calls, c)
		case <-rig.ended:
			rig.t.Fatalf("the session ended (%v) with %d of %d store calls in", rig.err, len(calls), n)
		case <-timeout:
			rig.t.Fatalf("%d of %d store calls in after 30s: want %d batches stored at once", len(calls), n, n)
		}
	}
	slices.SortFunc(calls, func(a, b *storeCall) int { return strings.Compare(pad(a.ids[0]), pad(b.ids[0])) })
	return calls
}

func pad(id string) string { return fmt.Sprintf("%10s", id) }

// TestPipelineAcksInTagOrder completes batches out of order, fails one and
// has Store refuse one message, and checks every ack against what is
// committed at the moment it is sent: no ack covers a tag before its
// message, and every earlier one, is committed or rejected.
func TestPipelineAcksInTagOrder(t *testing.T) {
	rig := newPipelineRig(t, 40)

	// Four batches at once; the first fails while the later three commit.
	c := rig.next(4)
	c[3].outcome <- nil
	c[2].outcome <- nil
	c[0].outcome <- errors.New("connection reset")
	c[1].outcome <- nil
	retry := rig.next(1)[0]
	if retry.ids[0] != c[0].ids[0] {
		t.Fatalf("store call for %v; want the failed batch %v retried", retry.ids, c[0].ids)
	}
	if _, acks := rig.ledger.snapshot(); len(acks) != 0 {
		t.Fatalf("acks %v while the first batch is not stored", acks)
	}
	retry.outcome <- nil

	// The next four: Store refuses one message of the second batch, the
	// rest commit out of order.
	c = rig.next(4)
	refused := c[1].ids[2]
	c[2].outcome <- nil
	c[1].outcome <- &inbox.InvalidMessageError{Index: 2, ID: refused, Reason: inbox.ReasonUnknownTopic}
	c[3].outcome <- nil
	again := rig.next(1)[0]
	if len(again.ids) != 4 || slices.Contains(again.ids, refused) {
		t.Fatalf("store call for %v; want the batch again without %s", again.ids, refused)
	}
	c[0].outcome <- nil
	again.outcome <- nil

	// Every delivery ends settled once: the good ones acked, the bad and
	// the refused rejected.
	last := uint64(rig.goodSent + len(rig.bad))
	deadline := time.Now().Add(30 * time.Second)
	for {
		settled, _ := rig.ledger.snapshot()
		if len(settled) == int(last) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d deliveries settled: %v", len(settled), last, settled)
		}
		time.Sleep(5 * time.Millisecond)
	}
	rig.cancel()
	if err := rig.end(errors.New("no store call expected")); err != nil {
		t.Fatalf("consume: %v", err)
	}
	settled, acks := rig.ledger.snapshot()
	refusedTag, _ := strconv.ParseUint(strings.TrimPrefix(refused, "m"), 10, 64)
	for tag := uint64(1); tag <= last; tag++ {
		want := "ack"
		if slices.Contains(rig.bad, tag) || tag == refusedTag {
			want = "reject"
		}
		if settled[tag] != want {
			t.Errorf("tag %d: %q, want %q", tag, settled[tag], want)
		}
	}
	if s := rig.s.r.Stats(); s.Acked != uint64(rig.goodSent-1) || s.StoreFailures != 1 || s.Stored != uint64(rig.goodSent-1) {
		t.Errorf("stats %+v: want %d acked and stored, 1 store failure", s, rig.goodSent-1)
	}
	t.Logf("acks up to tags %v", acks)
}

// TestPipelineSessionEndDropsAcks ends the session while the first batch
// fails and the later ones have committed: nothing is acked, so the broker
// redelivers all of them (the committed ones come back as duplicates).
func TestPipelineSessionEndDropsAcks(t *testing.T) {
	rig := newPipelineRig(t, 20)
	c := rig.next(4)
	for _, later := range c[1:] {
		later.outcome <- nil
	}
	c[0].outcome <- errors.New("connection reset")
	retry := rig.next(1)[0]
	rig.s.chClosed <- &amqp091.Error{Code: amqp091.ConnectionForced, Reason: "CONNECTION_FORCED"}
	// The attempt under way is left to finish; it fails again, as does any
	// other before the session notices.
	retry.outcome <- errors.New("connection reset")
	err := rig.end(errors.New("connection reset"))
	if err == nil || !strings.Contains(err.Error(), "CONNECTION_FORCED") {
		t.Fatalf("consume: %v; want the channel's close", err)
	}
	settled, acks := rig.ledger.snapshot()
	if len(acks) != 0 {
		t.Fatalf("acks up to tags %v after the first batch failed", acks)
	}
	for tag, how := range settled {
		if how != "reject" || !slices.Contains(rig.bad, tag) {
			t.Errorf("tag %d settled (%s); want only the bad deliveries rejected", tag, how)
		}
	}
	if s := rig.s.r.Stats(); s.Stored != 15 || s.Acked != 0 {
		t.Errorf("stats %+v: want 15 stored, none acked", s)
	}
}

// TestPipelineShutdownDeadline stops the receiver while the first batch's
// store hangs: the later batches committed, but at the shutdown deadline
// nothing is acked and the hanging attempt is cancelled.
func TestPipelineShutdownDeadline(t *testing.T) {
	rig := newPipelineRig(t, 20, func(c *Config) { c.ShutdownTimeout = 50 * time.Millisecond })
	c := rig.next(4)
	for _, later := range c[1:] {
		later.outcome <- nil
	}
	rig.cancel() // c[0] is never answered: only the deadline ends it
	err := rig.end(errors.New("no store call expected"))
	if !errors.Is(err, errNotStored) {
		t.Fatalf("consume: %v; want %v", err, errNotStored)
	}
	if _, acks := rig.ledger.snapshot(); len(acks) != 0 {
		t.Fatalf("acks up to tags %v while the first batch is not stored", acks)
	}
	if s := rig.s.r.Stats(); s.Stored != 15 || s.Acked != 0 {
		t.Errorf("stats %+v: want 15 stored, none acked", s)
	}
}

// TestPipelineGroupCommit: while a batch is being stored, the next one keeps
// gathering past its linger instead of leaving alone, and goes, whole, when
// the store under way returns.
func TestPipelineGroupCommit(t *testing.T) {
	rig := newPipelineRig(t, 0, func(c *Config) { c.BatchSize, c.BatchLinger = 100, time.Millisecond })
	deliver := func(tag uint64) {
		rig.feed <- amqp091.Delivery{DeliveryTag: tag, Type: "t", MessageId: fmt.Sprintf("m%d", tag)}
		waitFor(t, fmt.Sprintf("delivery %d received", tag), func() bool { return rig.s.r.Stats().Received == tag })
	}
	deliver(1)
	first := rig.next(1)[0] // lingered with nothing out: it goes
	deliver(2)
	// Not a check, an order of events: m2's linger runs out before m3 comes.
	time.Sleep(20 * time.Millisecond)
	deliver(3)
	first.outcome <- nil
	second := rig.next(1)[0]
	if !slices.Equal(second.ids, []string{"m2", "m3"}) {
		t.Fatalf("after the first batch, a store call for %v; want m2 and m3 stored together once the first returned", second.ids)
	}
	second.outcome <- nil
	waitFor(t, "all three acked", func() bool { return rig.s.r.Stats().Acked == 3 })
}

// waitFor polls cond until it holds, or fails the test after 30 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
