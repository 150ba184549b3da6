package amqp_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/amqp"
	"github.com/inboxkit/inbox/internal/sqlident"
	"github.com/inboxkit/inbox/internal/testenv"
)

// outboxOn returns an Outbox on the test's schema.
func (e *env) outbox() *inbox.Outbox {
	e.t.Helper()
	ob, err := inbox.NewOutbox(e.pool, inbox.OutboxConfig{Schema: e.schema, RetryInitial: 10 * time.Millisecond, RetryMax: 100 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(e.logs, nil))})
	if err != nil {
		e.t.Fatal(err)
	}
	return ob
}

// relay runs a Relay on ob until the test ends; name is its connection
// name, for closeConnections.
func (e *env) relay(ob *inbox.Outbox, name string, batch int) *amqp.Relay {
	e.t.Helper()
	r := e.newRelay(ob, name, batch)
	e.runRelay(r)
	return r
}

// newRelay makes the Relay that relay runs, for a test that sets hooks
// before it starts.
func (e *env) newRelay(ob *inbox.Outbox, name string, batch int) *amqp.Relay {
	e.t.Helper()
	r, err := amqp.NewRelay(ob, amqp.RelayConfig{
		URL: e.url, ConnectionName: name, BatchSize: batch, PollInterval: 50 * time.Millisecond,
		ReconnectInitial: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

// runRelay runs r until the test ends, and fails the test if Run fails.
func (e *env) runRelay(r *amqp.Relay) {
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	e.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("relay Run: %v", err)
		}
	})
}

// assertRelayRecovered checks, after a relay r of n messages was faulted
// mid-run, that it reconnected and published copies, that the downstream
// receiver rcv dropped them so each message took effect once, and that
// each stream was applied in order.
func (e *env) assertRelayRecovered(r *amqp.Relay, rcv *running, n int) {
	e.t.Helper()
	e.assertOnceEach(n)
	st := r.Stats()
	if st.Reconnects == 0 {
		e.t.Fatal("the relay never reconnected")
	}
	if st.Published <= uint64(n) || rcv.Stats().Duplicates == 0 {
		e.t.Fatalf("relay published %d for %d messages, receiver dropped %d duplicates: want copies, dropped downstream",
			st.Published, n, rcv.Stats().Duplicates)
	}
	bad := e.count(`SELECT count(*) FROM (SELECT seq, lag(seq) OVER (PARTITION BY stream ORDER BY applied) AS prev
		FROM ` + e.q + `.effects WHERE stream IS NOT NULL) x WHERE prev IS NOT NULL AND seq <> prev + 1`)
	if bad != 0 {
		e.t.Fatalf("%d effects applied out of stream order", bad)
	}
}

// queue declares a further queue, deleted at the end.
func (e *env) extraQueue(prefix string) string {
	e.t.Helper()
	q := testenv.UniqueName(prefix)
	if err := amqp.Declare(e.ctx, e.url, amqp.Topology{Queue: q}); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		deleteTopology(e.t, e.url, []string{q, q + amqp.DefaultDeadLetterQueueSuffix}, []string{q + amqp.DefaultDeadLetterExchangeSuffix})
	})
	return q
}

func (e *env) outboxCount(state string) int {
	return e.count(`SELECT count(*) FROM `+e.q+`.outbox_messages WHERE state = $1`, state)
}

// delivery is what a raw consumer saw.
type delivery struct {
	id, stream string
	seq        int64
}

// consumeRaw records every delivery of queue, in arrival order.
func (e *env) consumeRaw(queue string) func() []delivery {
	e.t.Helper()
	conn, err := amqp091.Dial(e.url)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		e.t.Fatal(err)
	}
	ds, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	var mu sync.Mutex
	var got []delivery
	go func() {
		for d := range ds {
			r := delivery{id: d.MessageId}
			if s, ok := d.Headers[amqp.DefaultStreamHeader].(string); ok {
				r.stream = s
				r.seq, _ = amqp.ParseSequence(d.Headers[amqp.DefaultSequenceHeader])
			}
			mu.Lock()
			got = append(got, r)
			mu.Unlock()
		}
	}()
	return func() []delivery {
		mu.Lock()
		defer mu.Unlock()
		return append([]delivery(nil), got...)
	}
}

// checkOrder fails unless each stream's deliveries have strictly increasing
// sequence numbers 1, 2, 3... and no ID came twice.
func checkRaw(t *testing.T, got []delivery) {
	t.Helper()
	next := map[string]int64{}
	seen := map[string]bool{}
	for _, d := range got {
		if seen[d.id] {
			t.Fatalf("message %s delivered twice", d.id)
		}
		seen[d.id] = true
		if d.stream == "" {
			continue
		}
		if want := next[d.stream] + 1; d.seq != want {
			t.Fatalf("stream %s: seq %d delivered after %d", d.stream, d.seq, next[d.stream])
		}
		next[d.stream] = d.seq
	}
}

// enqueueMany sends n messages to queue: every third unordered, the others
// spread over streams.
func enqueueMany(t *testing.T, ctx context.Context, ob *inbox.Outbox, queue, prefix string, n, streams int) {
	t.Helper()
	for i := 0; i < n; i++ {
		m := inbox.OutgoingMessage{ID: fmt.Sprintf("%s-%d", prefix, i), RoutingKey: queue, Type: topic, Body: []byte(`{}`)}
		if i%3 != 0 {
			m.Stream = fmt.Sprintf("%s-s%d", prefix, i%streams)
		}
		if _, err := ob.Send(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
}

// Two relays share one outbox: every message is published once, and each
// stream's in order.
func TestRelayTwoRelaysPublishEachOnceInOrder(t *testing.T) {
	e := setup(t)
	got := e.consumeRaw(e.queue)
	ob1, ob2 := e.outbox(), e.outbox()
	e.relay(ob1, e.queue+" relay 1", 16)
	e.relay(ob2, e.queue+" relay 2", 16)
	const n = 300
	enqueueMany(t, e.ctx, ob1, e.queue, "m", n, 7)
	e.waitFor("all sent", 60*time.Second, func() bool { return e.outboxCount("sent") == n })
	// Any copy would have been confirmed, so queued, before its row was
	// marked sent; the sentinel is published after all of them.
	if _, err := ob2.Send(e.ctx, inbox.OutgoingMessage{ID: "sentinel", RoutingKey: e.queue}); err != nil {
		t.Fatal(err)
	}
	e.waitFor("the sentinel", 30*time.Second, func() bool {
		d := got()
		return len(d) > 0 && d[len(d)-1].id == "sentinel"
	})
	d := got()
	if len(d) != n+1 {
		t.Fatalf("%d deliveries, want %d", len(d), n+1)
	}
	checkRaw(t, d)
}

// An unroutable message is returned by the broker before its confirm: it
// goes dead with the reason, while a routable one of the same batch is
// sent, and the unroutable one's stream waits behind it until retried.
func TestRelayUnroutableIsDead(t *testing.T) {
	e := setup(t)
	ob := e.outbox()
	nowhere := testenv.UniqueName("nowhere")
	_, err := ob.Send(e.ctx,
		inbox.OutgoingMessage{ID: "lost-1", Exchange: "amq.direct", RoutingKey: nowhere, Stream: "s"},
		inbox.OutgoingMessage{ID: "lost-2", Exchange: "amq.direct", RoutingKey: nowhere, Stream: "s"},
		inbox.OutgoingMessage{ID: "fine", RoutingKey: e.queue})
	if err != nil {
		t.Fatal(err)
	}
	r := e.relay(ob, e.queue+" relay", 10)
	e.waitFor("one dead and one sent", 30*time.Second, func() bool { return e.outboxCount("dead") == 1 && e.outboxCount("sent") == 1 })
	dead, err := ob.ListMessages(e.ctx, inbox.OutboxFilter{State: "dead"})
	if err != nil || len(dead) != 1 || dead[0].ID != "lost-1" || !strings.Contains(dead[0].LastError, "NO_ROUTE") {
		t.Fatalf("dead %+v, %v; want lost-1 dead with NO_ROUTE", dead, err)
	}
	if st := r.Stats(); st.Returned != 1 || st.Confirmed != 1 {
		t.Fatalf("relay stats %+v", st)
	}
	// Routable now: the replay publishes lost-1, then lost-2.
	conn, err := amqp091.Dial(e.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(e.queue, nowhere, "amq.direct", false, nil); err != nil {
		t.Fatal(err)
	}
	if n, err := ob.RetryDeadMessages(e.ctx, inbox.OutboxFilter{}); err != nil || n != 1 {
		t.Fatalf("retry: %d, %v", n, err)
	}
	e.waitFor("all three sent", 30*time.Second, func() bool { return e.outboxCount("sent") == 3 })
	if err := ch.QueueUnbind(e.queue, nowhere, "amq.direct", nil); err != nil {
		t.Fatal(err)
	}
}

// Faults between a batch's confirms and their recording lose nothing: with
// the claim's database connection killed there, the confirmed messages stay
// pending and are published again with the same IDs, and the downstream
// inbox drops the copies; with the broker connection closed there, the relay
// reconnects and goes on.
func TestRelayFaultsMidRun(t *testing.T) {
	e := setup(t)
	down := e.newInbox(inbox.Config{})
	rcv := e.run(down, e.receiverConfig())
	ob := e.outbox()
	name := e.queue + " relay"
	const n = 200
	enqueueMany(t, e.ctx, ob, e.queue, "m", n, 5)
	r := e.newRelay(ob, name, 8)
	batches := 0
	amqp.SetBeforeSettle(r, func(int) {
		batches++
		switch batches {
		case 1:
			// The claim is the transaction idle between statements.
			e.exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity
				WHERE application_name = $1 AND state = 'idle in transaction' AND query LIKE '%FOR UPDATE SKIP LOCKED%'`, e.schema)
		case 3:
			if closeConnections(t, name) != 1 {
				t.Error("the relay's connection was not found")
			}
		}
	})
	e.runRelay(r)
	e.waitFor("all sent", 60*time.Second, func() bool { return e.outboxCount("sent") == n })
	e.assertRelayRecovered(r, rcv, n)
}

// consume -> handle -> enqueue -> relay -> consume: inbox A's handler emits
// one follow-up per message (on a stream for ordered originals) and fails
// once after enqueueing for some; inbox B applies each follow-up exactly
// once, in order, and the failed runs left no messages behind.
func TestRelayChainEndToEnd(t *testing.T) {
	e := setup(t)
	queueB := e.extraQueue("outbox_b")
	poolB, schemaB := testenv.Schema(t, 20)
	qB := sqlident.Quote(schemaB)
	if _, err := poolB.Exec(e.ctx, `CREATE TABLE `+qB+`.effects (message_id text PRIMARY KEY, stream text, seq bigint, applied bigserial)`); err != nil {
		t.Fatal(err)
	}

	ob := e.outbox()
	inA := e.storeOnly(e.pool, inbox.Config{RetryInitial: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond})
	var mu sync.Mutex
	runs := map[string]int{}
	ids := map[string]string{}
	inA.Handle(topic, func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		out := inbox.OutgoingMessage{RoutingKey: queueB, Type: "follow.up", Body: m.Body}
		if m.Stream != "" {
			out.Stream = "out-" + m.Stream
		}
		res, err := ob.Enqueue(ctx, tx, out)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		runs[m.ID]++
		if prev, ok := ids[m.ID]; ok && prev != res.IDs[0] {
			return inbox.Permanent(fmt.Errorf("retry of %s enqueued %s, the failed run %s", m.ID, res.IDs[0], prev))
		}
		ids[m.ID] = res.IDs[0]
		if runs[m.ID] == 1 && len(m.ID)%2 == 0 {
			return errors.New("fails once after enqueueing")
		}
		return nil
	})
	if err := inA.Start(e.ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = inA.Stop(context.Background()) })
	e.run(inA, e.receiverConfig())

	inB, err := inbox.New(poolB, inbox.Config{Schema: schemaB, PollInterval: 50 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(e.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	var callsB counter
	inB.Handle("follow.up", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		callsB.add(m.ID)
		var stream any
		if m.Stream != "" {
			stream = m.Stream
		}
		_, err := tx.Exec(ctx, `INSERT INTO `+qB+`.effects (message_id, stream, seq) VALUES ($1, $2, $3)`, m.ID, stream, m.Seq)
		return err
	})
	if err := inB.Start(e.ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = inB.Stop(context.Background()) })
	cfgB := e.receiverConfig()
	cfgB.Queue, cfgB.ConnectionName = queueB, queueB+" receiver"
	e.run(inB, cfgB)
	e.relay(ob, e.queue+" relay", 10)

	const n = 60
	var pubs []amqp091.Publishing
	seq := map[string]int{}
	for i, p := range orders("o", n) {
		if i%4 != 0 {
			s := fmt.Sprintf("order-%d", i%5)
			seq[s]++
			p.Headers = amqp091.Table{amqp.DefaultStreamHeader: s, amqp.DefaultSequenceHeader: int64(seq[s])}
		}
		pubs = append(pubs, p)
	}
	e.publish(pubs...)

	countB := func(sql string) int {
		var k int
		if err := poolB.QueryRow(e.ctx, sql).Scan(&k); err != nil {
			t.Fatal(err)
		}
		return k
	}
	e.waitFor("every follow-up applied in B", 90*time.Second, func() bool {
		return countB(`SELECT count(*) FROM `+qB+`.effects`) >= n
	})
	e.waitFor("outbox drained", 30*time.Second, func() bool { return e.outboxCount("sent") == n })
	if k := countB(`SELECT count(*) FROM ` + qB + `.effects`); k != n {
		t.Fatalf("%d effects in B, want %d", k, n)
	}
	if k := e.count(`SELECT count(*) FROM ` + e.q + `.outbox_messages`); k != n {
		t.Fatalf("%d outgoing rows, want %d (the failed runs must leave none)", k, n)
	}
	if many := callsB.over(1); len(many) > 0 {
		t.Fatalf("B handled %v more than once", many)
	}
	bad := countB(`SELECT count(*) FROM (SELECT seq, lag(seq) OVER (PARTITION BY stream ORDER BY applied) AS prev
		FROM ` + qB + `.effects WHERE stream IS NOT NULL) x WHERE prev IS NOT NULL AND seq <> prev + 1`)
	if bad != 0 {
		t.Fatalf("%d follow-ups applied out of stream order in B", bad)
	}
	mu.Lock()
	defer mu.Unlock()
	retried := 0
	for _, k := range runs {
		if k > 1 {
			retried++
		}
	}
	if retried == 0 {
		t.Fatal("no handler failed after enqueueing: the retry case was not exercised")
	}
	// B's rows carry the IDs A's handler derived, each once.
	for orig, id := range ids {
		if k := countB(`SELECT count(*) FROM ` + qB + `.effects WHERE message_id = '` + id + `'`); k != 1 {
			t.Fatalf("follow-up %s of %s applied %d times in B, want 1", id, orig, k)
		}
	}
}

// A message the broker refuses by closing the channel (its exchange does
// not exist) is found by publishing the batch one by one, retried, and dead
// with the reason after MaxAttempts; the others of its batch are sent.
func TestRelayRefusedMessageIsDead(t *testing.T) { testRelayRefused(t, 10) }

// The same with batches of one, full, so each is published while the one
// before waits for its confirm: the refused one is still found, alone on
// the channel.
func TestRelayRefusedMessageIsDeadPipelined(t *testing.T) { testRelayRefused(t, 1) }

func testRelayRefused(t *testing.T, batch int) {
	e := setup(t)
	ob, err := inbox.NewOutbox(e.pool, inbox.OutboxConfig{Schema: e.schema, MaxAttempts: 2,
		RetryInitial: 10 * time.Millisecond, RetryMax: 20 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(e.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	_, err = ob.Send(e.ctx,
		inbox.OutgoingMessage{ID: "good-1", RoutingKey: e.queue},
		inbox.OutgoingMessage{ID: "bad", Exchange: testenv.UniqueName("missing"), RoutingKey: "x"},
		inbox.OutgoingMessage{ID: "good-2", RoutingKey: e.queue},
		inbox.OutgoingMessage{ID: "good-3", RoutingKey: e.queue})
	if err != nil {
		t.Fatal(err)
	}
	e.relay(ob, e.queue+" relay", batch)
	e.waitFor("bad dead, the others sent", 60*time.Second, func() bool {
		return e.outboxCount("dead") == 1 && e.outboxCount("sent") == 3
	})
	dead, err := ob.ListMessages(e.ctx, inbox.OutboxFilter{State: "dead"})
	if err != nil || len(dead) != 1 || dead[0].ID != "bad" || dead[0].Attempts != 2 || !strings.Contains(dead[0].LastError, "NOT_FOUND") {
		t.Fatalf("dead %+v, %v; want bad, dead after 2 attempts with NOT_FOUND", dead, err)
	}
	// A copy published again after the channel closed is not an attempt.
	if k := e.count(`SELECT count(*) FROM ` + e.q + `.outbox_messages WHERE state = 'sent' AND attempts <> 1`); k != 0 {
		t.Fatalf("%d good messages were charged with the refusal", k)
	}
}

// A stream's next message is published as soon as the previous one is
// marked sent, not at the next poll: here polling never comes, LISTEN is
// off, and the one enqueue wakes the relay at most once for a stream of
// five.
func TestRelayStreamGoesOnWithoutPolling(t *testing.T) {
	e := setup(t)
	ob := e.outbox()
	r, err := amqp.NewRelay(ob, amqp.RelayConfig{
		URL: e.url, ConnectionName: e.queue + " relay", PollInterval: time.Hour, DisableListen: true,
		Logger: slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	e.runRelay(r)
	var msgs []inbox.OutgoingMessage
	for i := range 5 {
		msgs = append(msgs, inbox.OutgoingMessage{ID: fmt.Sprintf("s-%d", i), RoutingKey: e.queue, Stream: "s"})
	}
	if _, err := ob.Send(e.ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	e.waitFor("the whole stream sent", 30*time.Second, func() bool { return e.outboxCount("sent") == 5 })
}
