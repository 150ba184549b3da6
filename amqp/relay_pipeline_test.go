package amqp_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/amqp"
	"github.com/inboxkit/inbox/internal/testenv"
)

// claimIDs claims up to limit messages and returns the claim and the
// message IDs it took, in order.
func claimIDs(t *testing.T, ctx context.Context, ob *inbox.Outbox, limit int) (*inbox.OutboxClaim, []string) {
	t.Helper()
	c, err := ob.Claim(ctx, limit)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Release) // an open claim would hold up dropping the schema
	var ids []string
	for _, m := range c.Messages {
		ids = append(ids, m.ID)
	}
	return c, ids
}

// settleSent marks every message of c sent.
func settleSent(t *testing.T, ctx context.Context, c *inbox.OutboxClaim) {
	t.Helper()
	var rows []int64
	for _, m := range c.Messages {
		rows = append(rows, m.RowID)
	}
	if err := c.Settle(ctx, rows, nil); err != nil {
		t.Fatal(err)
	}
}

// With two claims open at once, as a pipelined relay (or two relays) holds
// them, no stream has a message in both, and a stream's next message is
// claimable only once the previous one is marked sent, whichever claim held
// it: the row lock keeps other claims off a stream's head (SKIP LOCKED),
// and the head being unsent keeps them off the rest of the stream.
func TestRelayOpenClaimsKeepStreamsApart(t *testing.T) {
	e := setup(t)
	ob := e.outbox()
	// Rows in this order: s0-1 s1-1 s2-1 s3-1 s0-2 ... s3-3 u0 u1.
	for seq := 1; seq <= 3; seq++ {
		for s := range 4 {
			if _, err := ob.Send(e.ctx, inbox.OutgoingMessage{ID: fmt.Sprintf("s%d-%d", s, seq), RoutingKey: e.queue, Stream: fmt.Sprintf("s%d", s)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := ob.Send(e.ctx, inbox.OutgoingMessage{ID: "u0", RoutingKey: e.queue}, inbox.OutgoingMessage{ID: "u1", RoutingKey: e.queue}); err != nil {
		t.Fatal(err)
	}
	want := func(what string, got []string, ids ...string) {
		t.Helper()
		if !slices.Equal(got, ids) {
			t.Fatalf("%s claimed %v, want %v", what, got, ids)
		}
	}
	a, ids := claimIDs(t, e.ctx, ob, 3)
	want("a", ids, "s0-1", "s1-1", "s2-1")
	b, ids := claimIDs(t, e.ctx, ob, 100)
	want("b, with a open", ids, "s3-1", "u0", "u1")
	settleSent(t, e.ctx, a)
	c, ids := claimIDs(t, e.ctx, ob, 100)
	want("c, with a sent and b open", ids, "s0-2", "s1-2", "s2-2")
	settleSent(t, e.ctx, b)
	d, ids := claimIDs(t, e.ctx, ob, 100)
	want("d, with b sent and c open", ids, "s3-2")
	settleSent(t, e.ctx, c)
	settleSent(t, e.ctx, d)
	f, ids := claimIDs(t, e.ctx, ob, 100)
	want("f, with all before sent", ids, "s0-3", "s1-3", "s2-3", "s3-3")
	f.Release()
}

// Several claimers racing over one outbox, each holding its claim open
// while others claim: a claimed stream message is always the one after the
// last sent of its stream, and no two open claims hold one stream.
func TestRelayConcurrentClaimsKeepStreamOrder(t *testing.T) {
	e := setup(t)
	ob := e.outbox()
	const n, streams = 240, 6
	enqueueMany(t, e.ctx, ob, e.queue, "m", n, streams)
	var mu sync.Mutex
	sent := map[string]int64{} // stream -> last seq settled
	held := map[string]bool{}  // stream -> in an open claim
	var done atomic.Int64
	var failed atomic.Bool
	// check records the claim of c's stream messages, or says why it is wrong.
	check := func(c *inbox.OutboxClaim) error {
		mu.Lock()
		defer mu.Unlock()
		for _, m := range c.Messages {
			if m.Stream == "" {
				continue
			}
			if held[m.Stream] {
				return fmt.Errorf("stream %s claimed by two open claims", m.Stream)
			}
			if m.Seq != sent[m.Stream]+1 {
				return fmt.Errorf("stream %s: seq %d claimed after %d sent", m.Stream, m.Seq, sent[m.Stream])
			}
			held[m.Stream] = true
		}
		return nil
	}
	// settle marks c's messages sent; the test's record is updated before
	// the commit, as no claim takes a stream's next message until then.
	settle := func(c *inbox.OutboxClaim) error {
		var rows []int64
		mu.Lock()
		for _, m := range c.Messages {
			rows = append(rows, m.RowID)
			if m.Stream != "" {
				held[m.Stream] = false
				sent[m.Stream] = m.Seq
			}
		}
		mu.Unlock()
		if err := c.Settle(e.ctx, rows, nil); err != nil {
			return err
		}
		done.Add(int64(len(rows)))
		return nil
	}
	// claimer claims at most limit messages at a time until all are sent.
	claimer := func(limit int) error {
		for done.Load() < n && !failed.Load() {
			c, err := ob.Claim(e.ctx, limit)
			if err != nil {
				return err
			}
			if len(c.Messages) == 0 {
				continue // all claimable ones are held by the others
			}
			err = check(c)
			if err == nil {
				// A round trip with the claim open, for the others to claim.
				_, err = e.pool.Exec(e.ctx, `SELECT 1`)
			}
			if err == nil {
				err = settle(c)
			}
			if err != nil {
				c.Release()
				return err
			}
		}
		return nil
	}
	errs := make(chan error, 4)
	for w := range 4 {
		go func() {
			err := claimer(1 + w)
			if err != nil {
				failed.Store(true)
			}
			errs <- err
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if t.Failed() {
		return
	}
	if got := e.outboxCount("sent"); got != n {
		t.Fatalf("%d sent, want %d", got, n)
	}
}

// A lost connection while a full window of batches is in flight loses
// nothing: the oldest batch's confirms are in but its claim cannot record
// them (its database connection is killed), and the newer batches are
// published and waiting for their confirms when the broker closes the
// connection. Every
// message stays pending or is recorded, the relay reconnects and publishes
// the unrecorded ones again with the same IDs, the downstream inbox drops
// the copies, and each stream is applied in order.
func TestRelayPipelineLostConnection(t *testing.T) {
	e := setup(t)
	down := e.newInbox(inbox.Config{})
	rcv := e.run(down, e.receiverConfig())
	ob := e.outbox()
	name := e.queue + " relay"
	const n = 300
	enqueueMany(t, e.ctx, ob, e.queue, "m", n, 7)
	r := e.newRelay(ob, name, 8)
	var faulted atomic.Bool
	amqp.SetBeforeSettle(r, func(inFlight int) {
		if inFlight < 3 || faulted.Load() {
			return
		}
		faulted.Store(true)
		// The oldest of the open claims is this batch's.
		e.exec(`SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity
			WHERE application_name = $1 AND state = 'idle in transaction' AND query LIKE '%FOR UPDATE SKIP LOCKED%'
			ORDER BY xact_start LIMIT 1`, e.schema)
		if closeConnections(t, name) != 1 {
			t.Error("the relay's connection was not found")
		}
	})
	e.runRelay(r)
	e.waitFor("all sent", 60*time.Second, func() bool { return e.outboxCount("sent") == n })
	if !faulted.Load() {
		t.Fatal("the relay never had three batches in flight")
	}
	e.assertRelayRecovered(r, rcv, n)
}

// Returns are matched to their messages across batches: with small full
// batches, one batch's returns come while the previous batch's confirms are
// awaited, and each unroutable message still ends dead, each routable one
// sent.
func TestRelayReturnsAcrossPipelinedBatches(t *testing.T) {
	e := setup(t)
	ob := e.outbox()
	nowhere := testenv.UniqueName("nowhere")
	const n = 60
	var msgs []inbox.OutgoingMessage
	for i := range n {
		m := inbox.OutgoingMessage{ID: fmt.Sprintf("m-%d", i), RoutingKey: e.queue}
		if i%5 == 2 {
			m.ID, m.Exchange, m.RoutingKey = fmt.Sprintf("lost-%d", i), "amq.direct", nowhere
		}
		msgs = append(msgs, m)
	}
	if _, err := ob.Send(e.ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	got := e.consumeRaw(e.queue)
	r := e.relay(ob, e.queue+" relay", 4)
	e.waitFor("all settled", 30*time.Second, func() bool { return e.outboxCount("pending") == 0 })
	dead, err := ob.ListMessages(e.ctx, inbox.OutboxFilter{State: inbox.OutboxDead, Limit: n})
	if err != nil {
		t.Fatal(err)
	}
	if len(dead) != n/5 {
		t.Fatalf("%d dead, want %d", len(dead), n/5)
	}
	for _, m := range dead {
		if !strings.HasPrefix(m.ID, "lost-") || !strings.Contains(m.LastError, "NO_ROUTE") {
			t.Fatalf("dead %s (%s), want only the unroutable ones, with NO_ROUTE", m.ID, m.LastError)
		}
	}
	if st := r.Stats(); st.Returned != n/5 || st.Confirmed != n-n/5 {
		t.Fatalf("relay stats %+v", st)
	}
	e.waitFor("the routable ones delivered", 30*time.Second, func() bool { return len(got()) >= n-n/5 })
}
