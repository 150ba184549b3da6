package amqp_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/amqp"
	"github.com/inboxkit/inbox/internal/testenv"
)

// withDuplicates returns msgs followed by every tenth of them again, shuffled
// in among the last part so that duplicates arrive both within a batch and
// long after their original.
func withDuplicates(msgs []amqp091.Publishing) []amqp091.Publishing {
	out := append([]amqp091.Publishing{}, msgs...)
	for i := 0; i < len(msgs); i += 10 {
		out = append(out, msgs[i])
	}
	tail := out[len(msgs)/2:]
	rand.Shuffle(len(tail), func(i, j int) { tail[i], tail[j] = tail[j], tail[i] })
	return out
}

func TestTenThousandWithDuplicates(t *testing.T) {
	e := setup(t)
	const n = 10000
	in := e.newInbox(inbox.Config{})
	e.publish(withDuplicates(orders("m", n))...)

	r := e.run(in, e.receiverConfig())
	e.assertOnceEach(n)
	e.waitFor("every delivery acked", 20*time.Second, func() bool { return r.Stats().Acked >= n+n/10 })
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	e.assertDrained()

	s := r.Stats()
	if s.Stored != n || s.Duplicates != n/10 || s.Acked != n+n/10 {
		t.Fatalf("stats %+v: want %d stored, %d duplicates, %d acked", s, n, n/10, n+n/10)
	}
	if s.RejectedTotal() != 0 || s.StoreFailures != 0 || s.Reconnects != 0 {
		t.Fatalf("stats %+v: want no rejections, store failures or reconnects", s)
	}
}

// cutDialer records the receiver's sockets so a test can cut them, as a
// network failure would.
type cutDialer struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (d *cutDialer) dial(network, addr string) (net.Conn, error) {
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err == nil {
		d.mu.Lock()
		d.conns = append(d.conns, c)
		d.mu.Unlock()
	}
	return c, err
}

func (d *cutDialer) cutAll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.conns {
		_ = c.Close()
	}
	d.conns = nil
}

// gatedStore holds Store calls while its gate is shut, so that a test can
// act while a batch is in hand and unacked.
type gatedStore struct {
	*inbox.Inbox
	mu      sync.Mutex
	gate    chan struct{} // nil while open
	entered chan struct{}
}

func (g *gatedStore) Store(ctx context.Context, msgs ...inbox.Message) (inbox.StoreResult, error) {
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate != nil {
		select {
		case g.entered <- struct{}{}:
		default:
		}
		<-gate
	}
	return g.Inbox.Store(ctx, msgs...)
}

func (g *gatedStore) shut() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.gate = make(chan struct{})
}

func (g *gatedStore) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.gate != nil {
		close(g.gate)
		g.gate = nil
	}
}

func TestConnectionsForceClosed(t *testing.T) {
	e := setup(t)
	const n = 5000
	store := &gatedStore{Inbox: e.newInbox(inbox.Config{}), entered: make(chan struct{}, 1)}
	t.Cleanup(store.open)

	cfg := e.receiverConfig()
	cfg.BatchSize = 20
	cfg.Prefetch = 40
	var sockets cutDialer
	cfg.AMQP.Dial = sockets.dial
	r := e.run(store, cfg)

	// Six closes, alternately broker side (CONNECTION_FORCED, as
	// `rabbitmqctl close_all_connections` sends) and by cutting the socket.
	// Every other one lands while a batch is in hand: it is stored after the
	// connection is gone, so its ack is lost and its redelivery is a
	// duplicate that must not be handled again.
	const closes = 6
	pubs := withDuplicates(orders("m", n))
	chunk := len(pubs)/(closes+1) + 1
	for i := 0; i < closes; i++ {
		e.publish(pubs[i*chunk : (i+1)*chunk]...)
		acked := r.Stats().Acked
		e.waitFor("the receiver to make progress", 10*time.Second, func() bool { return r.Stats().Acked >= acked+40 })
		if i%4 < 2 {
			store.shut()
			select {
			case <-store.entered:
			case <-time.After(10 * time.Second):
				t.Fatal("no store while the gate was shut")
			}
		}
		if i%2 == 0 {
			if closed := closeConnections(t, cfg.ConnectionName); closed != 1 {
				t.Fatalf("closed %d connections named %q, want 1", closed, cfg.ConnectionName)
			}
		} else {
			sockets.cutAll()
		}
		store.open()
	}
	e.publish(pubs[closes*chunk:]...)
	e.assertOnceEach(n)
	// Each publishing is acked once; a delivery whose ack was lost counts
	// only when its redelivery is acked.
	e.waitFor("every delivery acked", 20*time.Second, func() bool { return r.Stats().Acked >= uint64(len(pubs)) })
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	e.assertDrained()
	s := r.Stats()
	if s.Reconnects < closes {
		t.Fatalf("stats %+v: want at least %d reconnects", s, closes)
	}
	if s.Stored != n {
		t.Fatalf("stats %+v: want %d stored", s, n)
	}
	if !strings.Contains(e.logs.String(), "CONNECTION_FORCED") {
		t.Fatalf("no log of the broker closing the connection")
	}
}

func TestDatabaseOutage(t *testing.T) {
	e := setup(t)
	const n = 3000
	e.newInbox(inbox.Config{})
	// The receiver stores through a pool of its own, whose backends the test
	// terminates.
	app := e.schema + "_rx"
	rxStore := e.storeOnly(testenv.Pool(t, app, 4), inbox.Config{})
	// Termination is asynchronous: a killed backend may still be listed,
	// waiting on the lock, for a moment; the test waits for one it has
	// not killed yet (a store retried after its backoff).
	killed := []int32{}
	kill := func() {
		// In the select list, so it runs only for the rows the filter keeps.
		rows, err := e.pool.Query(e.ctx, `SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1`, app)
		if err != nil {
			t.Fatal(err)
		}
		pids, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (pid int32, err error) {
			var terminated bool
			return pid, row.Scan(&pid, &terminated)
		})
		if err != nil {
			t.Fatal(err)
		}
		killed = append(killed, pids...)
	}

	cfg := e.receiverConfig()
	cfg.Prefetch, cfg.BatchSize = 200, 50 // several batches wait on the lock
	r := e.run(rxStore, cfg)
	e.publish(orders("m", 500)...)
	e.waitFor("the first messages stored", 10*time.Second, func() bool { return r.Stats().Acked == 500 })

	// Outage: the table is locked, so stores hang; the test then kills the
	// hanging backends, and the pool reconnects into the same lock.
	lock, err := e.pool.Begin(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lock.Rollback(context.Background()) }()
	if _, err := lock.Exec(e.ctx, `LOCK TABLE `+e.q+`.inbox_messages IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	e.publish(withDuplicates(orders("m", n))[500:]...)
	e.waitFor("deliveries held unacked", 10*time.Second, func() bool { return unacked(t, e.queue) == cfg.Prefetch })
	for i := 0; i < 4; i++ {
		e.waitFor("a store waiting on the lock", 10*time.Second, func() bool {
			return e.count(`SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'
				AND pid <> ALL($2)`, app, killed) > 0
		})
		failures := r.Stats().StoreFailures
		kill()
		// The killed store fails, and is retried into the lock again.
		e.waitFor("the killed store to fail", 10*time.Second, func() bool { return r.Stats().StoreFailures > failures })
		if got := r.Stats().Acked; got != 500 {
			t.Fatalf("%d deliveries acked during the outage; want the 500 stored before it", got)
		}
	}
	if got := unacked(t, e.queue); got != cfg.Prefetch {
		t.Fatalf("%d deliveries unacked during the outage, want %d (the prefetch)", got, cfg.Prefetch)
	}
	if err := lock.Rollback(e.ctx); err != nil {
		t.Fatal(err)
	}

	e.assertOnceEach(n)
	e.waitFor("every delivery acked", 20*time.Second, func() bool { return r.Stats().Acked == n+n/10 })
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	e.assertDrained()
	if s := r.Stats(); s.StoreFailures == 0 {
		t.Fatalf("stats %+v: want store failures counted", s)
	}
}

func TestMalformedToDeadLetterQueue(t *testing.T) {
	e := setup(t)
	in := e.newInbox(inbox.Config{MaxBodyBytes: 1024, StrictTopics: true})
	cfg := e.receiverConfig()
	cfg.MaxHeaderBytes = 2048
	cfg.Topology = &amqp.Topology{} // as declared: its dead-letter exchange takes the copies
	r := e.run(in, cfg)

	secret := []byte("SECRET-BODY " + strings.Repeat("x", 2000))
	bad := []struct {
		name   string
		reason string
		msg    amqp091.Publishing
	}{
		{"no-id", inbox.ReasonMissingID, amqp091.Publishing{Body: []byte("{}")}},
		{"garbage-seq", inbox.ReasonBadSequence, amqp091.Publishing{MessageId: "b1", Headers: amqp091.Table{"x-stream-key": "s", "x-sequence": "twelve"}}},
		{"negative-seq", inbox.ReasonBadSequence, amqp091.Publishing{MessageId: "b2", Headers: amqp091.Table{"x-stream-key": "s", "x-sequence": int32(-3)}}},
		{"fraction-seq", inbox.ReasonBadSequence, amqp091.Publishing{MessageId: "b3", Headers: amqp091.Table{"x-stream-key": "s", "x-sequence": 1.5}}},
		{"missing-seq", inbox.ReasonBadSequence, amqp091.Publishing{MessageId: "b4", Headers: amqp091.Table{"x-stream-key": "s"}}},
		{"zero-seq", inbox.ReasonBadSequence, amqp091.Publishing{MessageId: "b5", Headers: amqp091.Table{"x-stream-key": "s", "x-sequence": int64(0)}}},
		{"bool-stream", amqp.ReasonBadStream, amqp091.Publishing{MessageId: "b6", Headers: amqp091.Table{"x-stream-key": true, "x-sequence": 1}}},
		{"oversize", inbox.ReasonBodyTooLarge, amqp091.Publishing{MessageId: "b7", Body: secret}},
		{"big-headers", amqp.ReasonHeadersTooLarge, amqp091.Publishing{MessageId: "b8", Headers: amqp091.Table{"h": strings.Repeat("y", 3000)}}},
		{"unknown-topic", inbox.ReasonUnknownTopic, amqp091.Publishing{MessageId: "b9", Type: "no.such.topic"}},
	}
	var pubs []amqp091.Publishing
	good := orders("good", 20)
	for i, b := range bad {
		b.msg.Headers = withHeader(b.msg.Headers, "test-case", b.name)
		pubs = append(pubs, good[i], b.msg)
	}
	pubs = append(pubs, good[len(bad):]...)
	e.publish(pubs...)

	e.assertOnceEach(len(good))
	// The dead-letter queue gets every bad message whole, with why and
	// from where in its headers.
	reasons := map[string]string{}
	for _, b := range bad {
		reasons[b.name] = b.reason
	}
	dead := map[string]bool{}
	e.waitFor("bad messages in the dead-letter queue", 10*time.Second, func() bool {
		for {
			d, ok, err := e.pub.Get(e.dlq, true)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				return len(dead) == len(bad)
			}
			name, _ := d.Headers["test-case"].(string)
			if got := d.Headers[amqp.HeaderRejectReason]; got != reasons[name] || reasons[name] == "" {
				t.Fatalf("%s: %s %v, want %q", name, amqp.HeaderRejectReason, got, reasons[name])
			}
			if d.Headers[amqp.HeaderRejectQueue] != e.queue || d.Headers[amqp.HeaderRejectRoutingKey] != e.queue {
				t.Fatalf("%s: headers %v; want the queue and routing key it was rejected from", name, d.Headers)
			}
			if name == "oversize" && (!bytes.Equal(d.Body, secret) || d.Headers[amqp.HeaderRejectDetail] != "2012 bytes, limit 1024") {
				t.Fatalf("oversize: body of %d bytes, detail %v; want the body whole and the size in the detail", len(d.Body), d.Headers[amqp.HeaderRejectDetail])
			}
			dead[name] = true
		}
	})
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	e.assertDrained()

	want := map[string]uint64{}
	for _, b := range bad {
		want[b.reason]++
	}
	s := r.Stats()
	for reason, n := range want {
		if s.Rejected[reason] != n {
			t.Errorf("rejected for %q: %d, want %d (all: %v)", reason, s.Rejected[reason], n, s.Rejected)
		}
	}
	logs := e.logs.String()
	for _, b := range bad {
		if !strings.Contains(logs, fmt.Sprintf("reason=%q", b.reason)) {
			t.Errorf("no log line with reason %q", b.reason)
		}
	}
	if strings.Contains(logs, "SECRET-BODY") {
		t.Error("a message body reached the logs")
	}
	if strings.Contains(logs, "guest:guest@") {
		t.Error("the broker password reached the logs")
	}
}

// TestRejectFallsBackToTheBroker: when the copy cannot be published (here
// the dead-letter exchange named in the Config does not exist), the
// delivery is rejected and the broker dead-letters it, x-death and all.
func TestRejectFallsBackToTheBroker(t *testing.T) {
	e := setup(t)
	in := e.newInbox(inbox.Config{})
	cfg := e.receiverConfig()
	cfg.DeadLetterExchange = e.queue + ".missing"
	r := e.run(in, cfg)
	e.publish(amqp091.Publishing{Body: []byte("no id")}, amqp091.Publishing{Body: []byte("no id either")})
	e.publish(orders("good", 3)...)
	e.assertOnceEach(3)

	var got int
	e.waitFor("the bad messages in the dead-letter queue", 10*time.Second, func() bool {
		for {
			d, ok, err := e.pub.Get(e.dlq, true)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				return got == 2
			}
			deaths, _ := d.Headers["x-death"].([]any)
			if len(deaths) != 1 || deaths[0].(amqp091.Table)["reason"] != "rejected" {
				t.Fatalf("x-death %v; want one, reason rejected", d.Headers["x-death"])
			}
			got++
		}
	})
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if s := r.Stats(); s.Rejected[inbox.ReasonMissingID] != 2 {
		t.Fatalf("stats %+v: want 2 rejected without an ID", s)
	}
	if !strings.Contains(e.logs.String(), "could not publish the dead-letter copy") {
		t.Fatal("no log of the failed copy")
	}
}

func withHeader(h amqp091.Table, k string, v any) amqp091.Table {
	if h == nil {
		h = amqp091.Table{}
	}
	h[k] = v
	return h
}

func TestStreamsInOrderWithEveryIntegerType(t *testing.T) {
	e := setup(t)
	var mu sync.Mutex
	seen := map[string][]int64{}
	in := e.storeOnly(e.pool, inbox.Config{})
	in.Handle(topic, func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		mu.Lock()
		seen[m.Stream] = append(seen[m.Stream], m.Seq)
		mu.Unlock()
		return e.effect(ctx, tx, m)
	})
	if err := in.Start(e.ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = in.Stop(context.Background()) })

	seqs := []any{int8(1), uint8(2), int16(3), uint16(4), int32(5), uint32(6), int64(7), "8",
		[]byte("9"), float32(10), float64(11), amqp091.Decimal{Scale: 1, Value: 120}}
	var pubs []amqp091.Publishing
	for _, stream := range []any{"a", "b", int64(42)} {
		for i, seq := range seqs {
			pubs = append(pubs, amqp091.Publishing{
				MessageId: fmt.Sprintf("%v-%d", stream, i),
				Headers:   amqp091.Table{"x-stream-key": stream, "x-sequence": seq, "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
			})
		}
	}
	// A late duplicate under a new ID, by sequence below the watermark.
	r := e.run(in, e.receiverConfig())
	e.publish(pubs...)
	e.assertOnceEach(len(pubs))
	e.publish(amqp091.Publishing{MessageId: "a-late", Headers: amqp091.Table{"x-stream-key": "a", "x-sequence": int8(3)}})
	e.waitFor("the late duplicate acked", 10*time.Second, func() bool { return r.Stats().Duplicates == 1 })
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	e.assertDrained()

	mu.Lock()
	defer mu.Unlock()
	for _, stream := range []string{"a", "b", "42"} {
		got := seen[stream]
		if len(got) != len(seqs) {
			t.Fatalf("stream %s handled %v", stream, got)
		}
		for i, s := range got {
			if s != int64(i+1) {
				t.Fatalf("stream %s handled in order %v", stream, got)
			}
		}
	}
	var traceparent string
	err := e.pool.QueryRow(e.ctx, `SELECT headers->>'traceparent' FROM `+e.q+`.inbox_messages WHERE message_id = 'a-0'`).Scan(&traceparent)
	if err != nil || !strings.HasPrefix(traceparent, "00-0af7651916cd43dd") {
		t.Fatalf("traceparent %q, %v", traceparent, err)
	}
}

func TestShutdownFinishesTheBatchInHand(t *testing.T) {
	e := setup(t)
	const n = 3000
	store := e.storeOnly(e.pool, inbox.Config{})
	e.publish(orders("m", n)...)

	cfg := e.receiverConfig()
	cfg.BatchSize = 10
	cfg.Prefetch = 50
	r := e.run(store, cfg)
	e.waitFor("some deliveries acked", 10*time.Second, func() bool { return r.Stats().Acked >= 200 })
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	s := r.Stats()
	left := e.depthAfterStop()
	rows := e.rows()
	if uint64(rows) != s.Acked || rows+left != n {
		t.Fatalf("after stop: %d rows, %d acked, %d left in the queue; want rows = acked and rows + left = %d", rows, s.Acked, left, n)
	}

	// A second receiver takes the rest, and the workers run each once.
	in := e.newInbox(inbox.Config{})
	r2 := e.run(in, cfg)
	e.assertOnceEach(n)
	e.waitFor("every delivery acked", 10*time.Second, func() bool { return r2.Stats().Acked == uint64(left) })
	if err := r2.stop(); err != nil {
		t.Fatal(err)
	}
	e.assertDrained()
}

func TestQueueDeletedUnderTheConsumer(t *testing.T) {
	t.Run("without topology it waits for the queue", func(t *testing.T) {
		e := setup(t)
		in := e.newInbox(inbox.Config{})
		r := e.run(in, e.receiverConfig())
		e.publish(orders("before", 5)...)
		e.waitFor("the first messages", 10*time.Second, func() bool { return r.Stats().Acked == 5 })

		if _, err := e.pub.QueueDelete(e.queue, false, false, false); err != nil {
			t.Fatal(err)
		}
		// Six sessions fail on the missing queue. A crash loop would retry
		// each time after about ReconnectInitial (50ms); with backoff, the
		// sixth wait is at least 50ms×1.5^5/2, some 190ms, whatever the
		// jitter, and at most ReconnectMax.
		notFound := regexp.MustCompile(`msg="queue not found.* retry_in=([0-9.]+m?s)`)
		var waits []time.Duration
		e.waitFor("six sessions without a queue", 30*time.Second, func() bool {
			waits = waits[:0]
			for _, m := range notFound.FindAllStringSubmatch(e.logs.String(), -1) {
				d, err := time.ParseDuration(m[1])
				if err != nil {
					t.Fatal(err)
				}
				waits = append(waits, d)
			}
			return len(waits) >= 6
		})
		if w := waits[5]; w < 150*time.Millisecond || w > 500*time.Millisecond {
			t.Fatalf("waits between sessions without a queue: %v; want the sixth between 150ms and ReconnectMax (500ms)", waits)
		}
		if logs := e.logs.String(); !strings.Contains(logs, "consumer cancelled by the broker") {
			t.Fatalf("want a clear log of the cancel:\n%s", logs)
		}

		if err := amqp.Declare(e.ctx, e.url, amqp.Topology{Queue: e.queue}); err != nil {
			t.Fatal(err)
		}
		e.publish(orders("after", 5)...)
		e.assertOnceEach(10)
	})
	t.Run("with topology it declares it again", func(t *testing.T) {
		e := setup(t)
		in := e.newInbox(inbox.Config{})
		cfg := e.receiverConfig()
		cfg.Topology = &amqp.Topology{}
		r := e.run(in, cfg)
		e.publish(orders("before", 5)...)
		e.waitFor("the first messages", 10*time.Second, func() bool { return r.Stats().Acked == 5 })

		if _, err := e.pub.QueueDelete(e.queue, false, false, false); err != nil {
			t.Fatal(err)
		}
		e.waitFor("the receiver to reconnect", 10*time.Second, func() bool { return r.Stats().Reconnects >= 1 })
		e.waitFor("the queue declared again and consumed", 10*time.Second, func() bool {
			q, err := inspect(e.url, e.queue)
			return err == nil && q.Consumers == 1
		})
		e.publish(orders("after", 5)...)
		e.assertOnceEach(10)
	})
}

// heldCall is a Store call of heldBatches, held until the test says how it
// ends: nil stores the batch, an error fails it without storing.
type heldCall struct {
	first   string // the first message ID
	outcome chan error
}

// heldBatches holds each Store call for the test to complete, in any order,
// until it is opened.
type heldBatches struct {
	*inbox.Inbox
	calls  chan heldCall
	mu     sync.Mutex
	opened bool
}

func (h *heldBatches) Store(ctx context.Context, msgs ...inbox.Message) (inbox.StoreResult, error) {
	h.mu.Lock()
	opened := h.opened
	h.mu.Unlock()
	if !opened {
		c := heldCall{first: msgs[0].ID, outcome: make(chan error, 1)}
		h.calls <- c
		if err := <-c.outcome; err != nil {
			return inbox.StoreResult{}, err
		}
	}
	return h.Inbox.Store(ctx, msgs...)
}

func (h *heldBatches) open() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.opened = true
}

// failHeld fails the Store calls held now; releaseHeld lets them store.
func (h *heldBatches) failHeld() { h.settleHeld(errors.New("injected failure")) }

func (h *heldBatches) releaseHeld() { h.settleHeld(nil) }

func (h *heldBatches) settleHeld(outcome error) {
	for {
		select {
		case c := <-h.calls:
			c.outcome <- outcome
		default:
			return
		}
	}
}

// next waits for the next held Store call.
func (h *heldBatches) next(t *testing.T) heldCall {
	t.Helper()
	select {
	case c := <-h.calls:
		return c
	case <-time.After(20 * time.Second):
		t.Fatal("no store call in 20s")
		return heldCall{}
	}
}

// TestBatchesStoredAtOnceAckedInOrder stores four batches at once and
// completes them out of order: the first fails while the three after it
// commit. Nothing may be acked past the failed batch: when the connection
// then closes, the broker redelivers all forty deliveries, and the thirty
// already stored come back as duplicates.
func TestBatchesStoredAtOnceAckedInOrder(t *testing.T) {
	e := setup(t)
	const n = 40
	store := &heldBatches{Inbox: e.newInbox(inbox.Config{}), calls: make(chan heldCall, 8)}
	e.publish(orders("m", n)...)
	cfg := e.receiverConfig()
	cfg.Prefetch, cfg.BatchSize, cfg.BatchesInFlight = n, 10, 4
	cfg.BatchLinger = time.Hour // batches of ten, as the deliveries arrive
	r := e.run(store, cfg)

	calls := map[string]heldCall{}
	for range 4 {
		c := store.next(t)
		calls[c.first] = c
	}
	for _, first := range []string{"m-30", "m-20", "m-10"} {
		calls[first].outcome <- nil
	}
	calls["m-0"].outcome <- errors.New("injected failure")
	retry := store.next(t)
	if retry.first != "m-0" {
		t.Fatalf("store call for a batch from %s; want the failed one retried", retry.first)
	}
	e.waitFor("the three later batches stored", 10*time.Second, func() bool { return r.Stats().Stored == 30 })
	if closed := closeConnections(t, cfg.ConnectionName); closed != 1 {
		t.Fatalf("closed %d connections named %q, want 1", closed, cfg.ConnectionName)
	}
	// Until the next session starts, every store fails: the first session
	// stores nothing more.
	retry.outcome <- errors.New("injected failure")
	e.waitFor("the next session", 10*time.Second, func() bool {
		store.failHeld()
		return r.Stats().Reconnects >= 1
	})
	store.open()
	e.waitFor("every delivery acked", 20*time.Second, func() bool {
		store.releaseHeld()
		return r.Stats().Acked == n
	})
	e.assertOnceEach(n)
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	e.assertDrained()
	// Redelivered: all forty, so none was acked in the first session.
	if s := r.Stats(); s.Received != 2*n || s.Stored != n || s.Duplicates != 30 || s.Acked != n {
		t.Fatalf("stats %+v: want %d received, %d stored, 30 duplicates, %d acked", s, 2*n, n, n)
	}
}
