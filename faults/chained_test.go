package faults

import (
	"context"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/inboxkit/inbox/amqp"
)

// The chained cases run the ledger through two inboxes and the outbox
// between them: the publisher sends the ledger to queue A; the forwarder
// (cmd/ledger-consumer with FAULTS_FORWARD_QUEUE) applies each message and
// enqueues one follow-up, on the message's stream if it has one, through
// the outbox of schema A in the handler's transaction; the relay
// (cmd/ledger-relay) publishes the outbox to queue B; the downstream
// consumer (cmd/ledger-consumer on schema B) applies the follow-ups.

// originHeader is the follow-up header naming its original
// (OriginHeader in cmd/ledger-consumer).
const originHeader = "x-origin-id"

// chain is a chained case's two environments: A (queue, inbox and outbox
// of the forwarder) and B (queue and inbox of the downstream consumer).
type chain struct {
	t    *testing.T
	a, b *env
}

func setupChain(t *testing.T) *chain {
	t.Helper()
	needLedgerConsumer(t)
	c := &chain{t: t, a: setup(t), b: setup(t)}
	// A statement trigger that, while armed, holds the relay between a
	// batch's confirms and the UPDATE that marks it sent: the window in
	// which a relay killed leaves published messages pending.
	c.a.exec(`CREATE TABLE ` + c.a.q + `.fault_settle (delay_s float8 NOT NULL)`)
	c.a.exec(`INSERT INTO ` + c.a.q + `.fault_settle VALUES (0)`)
	c.a.exec(`CREATE FUNCTION ` + c.a.q + `.fault_settle_delay() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			PERFORM pg_sleep(delay_s) FROM ` + c.a.q + `.fault_settle;
			RETURN NULL;
		END $$`)
	c.a.exec(`CREATE TRIGGER fault_settle_delay BEFORE UPDATE ON ` + c.a.q + `.outbox_messages
		FOR EACH STATEMENT EXECUTE FUNCTION ` + c.a.q + `.fault_settle_delay()`)
	return c
}

func (c *chain) startForwarder() *proc {
	return c.a.start("forwarder", "FAULTS_FORWARD_QUEUE="+c.b.queue)
}

func (c *chain) startRelay() *proc { return c.a.startBin(relayBin, "relay") }

func (c *chain) startDownstream() *proc { return c.b.start("downstream") }

// startAll starts the three processes and waits until the relay is
// connected, so that faults aimed at it find it.
func (c *chain) startAll() (forwarder, relay, downstream *proc) {
	c.t.Helper()
	forwarder, relay, downstream = c.startForwarder(), c.startRelay(), c.startDownstream()
	if !c.a.connected(relay.name, 15*time.Second) {
		c.t.Fatalf("relay never connected\n%s", relay.tail())
	}
	return forwarder, relay, downstream
}

// TestChainLedger is the chained baseline: no fault.
func TestChainLedger(t *testing.T) {
	t.Parallel()
	c := setupChain(t)
	l := newLedger(ledgerSize, ledgerDups, 21)
	c.startAll()
	c.a.publish(l, chunk, pause).wait(t)
	c.check("chain", l, nil)
}

// TestChainRelayKilledBeforeMark SIGKILLs the relay three times after the
// broker confirmed a batch and downstream inbox B stored some of it, but
// before the relay marked the batch sent: those messages stay pending, a
// new relay publishes them again, and inbox B must drop the copies.
func TestChainRelayKilledBeforeMark(t *testing.T) {
	t.Parallel()
	c := setupChain(t)
	l := newLedger(ledgerSize, ledgerDups, 22)
	c.startForwarder()
	c.startDownstream()
	// The relay starts on a full outbox, so every window has a batch.
	c.a.publish(l, chunk, pause).wait(t)
	c.a.waitCount(`SELECT count(*) FROM `+c.a.q+`.outbox_messages`, len(l.entries))
	relay := c.startRelay()
	var copies []string
	for i := 0; i < 3; i++ {
		copies = append(copies, c.killBeforeMark(relay)...)
		relay = c.startRelay()
		// Let the new relay settle some batches before the next kill.
		sent := c.a.count(`SELECT count(*) FROM ` + c.a.q + `.outbox_messages WHERE state = 'sent'`)
		c.a.waitCount(`SELECT count(*) FROM `+c.a.q+`.outbox_messages WHERE state = 'sent'`, sent+100)
	}
	c.check("chain-kill-before-mark", l, copies)
}

// killBeforeMark arms the settle delay, waits until the relay is held in
// it with messages of its batch already stored by inbox B, SIGKILLs it,
// disarms the delay, and returns those messages' IDs.
func (c *chain) killBeforeMark(relay *proc) []string {
	c.t.Helper()
	c.a.exec(`UPDATE ` + c.a.q + `.fault_settle SET delay_s = 3`)
	defer c.a.exec(`UPDATE ` + c.a.q + `.fault_settle SET delay_s = 0`)
	deadline := time.Now().Add(30 * time.Second)
	for {
		held := c.a.count(`SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event = 'PgSleep'`, relay.name)
		if held > 0 {
			if ids := c.publishedNotMarked(); len(ids) > 0 {
				relay.signal(c.t, syscall.SIGKILL, 10*time.Second)
				c.a.fault()
				return ids
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("the relay never held a batch that inbox B had stored (held in the settle delay: %v)\n%s", held > 0, relay.tail())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// publishedNotMarked are the outbox messages still pending that inbox B
// has already stored: published and confirmed, not yet marked sent.
func (c *chain) publishedNotMarked() []string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rows, err := c.a.pool.Query(ctx, `SELECT o.message_id FROM `+c.a.q+`.outbox_messages o
		WHERE o.state = 'pending' AND EXISTS (SELECT 1 FROM `+c.b.q+`.inbox_messages i WHERE i.message_id = o.message_id)`)
	if err != nil {
		c.t.Fatal(err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			c.t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		c.t.Fatal(err)
	}
	return ids
}

// TestChainRelayKilled SIGKILLs the relay process four times at random
// moments while messages flow, and restarts it: whatever it had claimed is
// published again by its successor, and inbox B drops the copies.
func TestChainRelayKilled(t *testing.T) {
	t.Parallel()
	c := setupChain(t)
	l := newLedger(ledgerSize, ledgerDups, 23)
	rng := rand.New(rand.NewPCG(23, 23))
	_, relay, _ := c.startAll()
	pub := c.a.publish(l, chunk, pause)
	for i := 0; i < 4; i++ {
		sleepJitter(rng, 300*time.Millisecond, 700*time.Millisecond)
		relay.signal(t, syscall.SIGKILL, 10*time.Second)
		c.a.fault()
		relay = c.startRelay()
	}
	pub.wait(t)
	c.check("chain-relay-sigkill", l, nil)
}

// TestChainConnectionsClosed closes, broker side, the AMQP connections of
// all three processes four times: the relay loses its channel with
// confirms outstanding and publishes those messages again; the consumers
// get their unacked deliveries again.
func TestChainConnectionsClosed(t *testing.T) {
	t.Parallel()
	c := setupChain(t)
	l := newLedger(ledgerSize, ledgerDups, 24)
	procs := []*proc{}
	f, r, d := c.startAll()
	procs = append(procs, f, r, d)
	for _, p := range procs {
		if !c.a.connected(p.name, 15*time.Second) {
			t.Fatalf("%s never connected\n%s", p.name, p.tail())
		}
	}
	pub := c.a.publish(l, chunk, pause)
	for i := 0; i < 4; i++ {
		for _, p := range procs {
			if n := closeConnections(t, p.name); n == 0 {
				t.Fatalf("no connection named %q to close", p.name)
			}
		}
		c.a.fault()
		for _, p := range procs {
			if !c.a.connected(p.name, 15*time.Second) {
				t.Fatalf("%s did not reconnect\n%s", p.name, p.tail())
			}
		}
		time.Sleep(300 * time.Millisecond)
	}
	pub.wait(t)
	c.check("chain-amqp-close", l, nil)
}

// TestChainBackendsTerminated terminates every PostgreSQL backend of the
// forwarder and the relay four times: the forwarder's handlers (and their
// enqueues) roll back and run again, enqueuing the same follow-ups; the
// relay's claims and settles fail, and what it published is published
// again.
func TestChainBackendsTerminated(t *testing.T) {
	t.Parallel()
	c := setupChain(t)
	l := newLedger(ledgerSize, ledgerDups, 25)
	f, r, _ := c.startAll()
	pub := c.a.publish(l, chunk, pause)
	killed := map[string]int{}
	for i := 0; i < 4; i++ {
		time.Sleep(600 * time.Millisecond)
		for _, p := range []*proc{f, r} {
			killed[p.name] += c.a.terminateBackends(p.name, "%")
		}
		c.a.fault()
	}
	pub.wait(t)
	for _, p := range []*proc{f, r} {
		if killed[p.name] == 0 {
			t.Fatalf("no backend of %s was found to terminate", p.name)
		}
		if !p.running() {
			t.Fatalf("%s exited\n%s", p.name, p.tail())
		}
	}
	c.check("chain-pg-terminate", l, nil)
	t.Logf("terminated %d backends of the forwarder and %d of the relay", killed[f.name], killed[r.name])
}

// waitCount waits until the query's count reaches n.
func (e *env) waitCount(query string, n int) {
	e.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		got := e.count(query)
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: %d after 60s, want %d", query, got, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// followUp is an outbox row of schema A.
type followUp struct {
	id, origin, stream, state string
	seq                       int64
}

// check waits until every confirmed original has been applied in B through
// its follow-up, stops the processes with SIGTERM, and verifies: each
// original forwarded once and its follow-up sent; each follow-up applied
// once in B, with its original's stream and sequence, in stream order;
// nothing pending or dead in either inbox or the outbox; every queue
// empty. copies are follow-ups that a case knows were published twice:
// they must be sent and applied once like the others.
func (c *chain) check(name string, l *ledger, copies []string) figures {
	c.t.Helper()
	a, b := c.a, c.b
	a.mu.Lock()
	confirmed := make(map[string]bool, len(a.confirm))
	for id := range a.confirm {
		confirmed[id] = true
	}
	f := figures{messages: len(confirmed), sent: len(l.sends), faults: a.faults}
	a.mu.Unlock()
	if len(confirmed) != len(l.entries) {
		c.t.Errorf("broker confirmed %d of %d messages", len(confirmed), len(l.entries))
	}
	byID := map[string]entry{}
	for _, en := range l.entries {
		byID[en.id] = en
	}

	deadline := time.Now().Add(60 * time.Second)
	for {
		applied := b.count(`SELECT count(DISTINCT message_id) FROM ` + b.q + `.effects`)
		outbox := a.count(`SELECT count(*) FROM ` + a.q + `.outbox_messages WHERE state <> 'sent'`)
		pending := a.count(`SELECT count(*) FROM `+a.q+`.inbox_messages WHERE state = 'pending'`) +
			b.count(`SELECT count(*) FROM `+b.q+`.inbox_messages WHERE state = 'pending'`)
		if applied >= len(confirmed) && outbox == 0 && pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			c.t.Errorf("%s: after 60s: %d of %d applied in B, %d outbox messages not sent, %d inbox messages pending",
				name, applied, len(confirmed), outbox, pending)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	a.waitQueueEmpty()
	b.waitQueueEmpty()
	a.stopAll()
	b.stopAll()
	time.Sleep(300 * time.Millisecond) // the broker requeues asynchronously
	for _, e := range []*env{a, b} {
		for _, q := range []string{e.queue, e.queue + amqp.DefaultDeadLetterQueueSuffix} {
			if n := e.inspect(q).Messages; n != 0 {
				c.t.Errorf("%s: queue %s holds %d messages after the processes stopped", name, q, n)
			}
		}
	}

	// The outbox: one follow-up per original, each sent.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rows, err := a.pool.Query(ctx, `SELECT message_id, coalesce(headers->>$1, ''), coalesce(stream, ''), coalesce(seq, 0), state
		FROM `+a.q+`.outbox_messages`, originHeader)
	if err != nil {
		c.t.Fatal(err)
	}
	follow := map[string]followUp{}
	forwarded := map[string]int{}
	for rows.Next() {
		var u followUp
		if err := rows.Scan(&u.id, &u.origin, &u.stream, &u.seq, &u.state); err != nil {
			c.t.Fatal(err)
		}
		follow[u.id] = u
		forwarded[u.origin]++
		switch u.state {
		case "dead":
			f.dead++
			c.t.Errorf("%s: follow-up %s of %s is dead in the outbox", name, u.id, u.origin)
		case "pending":
			f.pending++
		}
	}
	if err := rows.Err(); err != nil {
		c.t.Fatal(err)
	}
	for id := range confirmed {
		if forwarded[id] > 1 {
			c.t.Errorf("%s: %s forwarded %d times", name, id, forwarded[id])
		}
	}
	for _, id := range copies {
		if u, ok := follow[id]; !ok || u.state != "sent" {
			c.t.Errorf("%s: follow-up %s, published before the relay was killed, is %q, want sent", name, id, u.state)
		}
	}

	// Inbox B: each original's follow-up applied once, with the original's
	// stream and sequence, in stream order.
	rows, err = b.pool.Query(ctx, `SELECT message_id, stream, seq FROM `+b.q+`.effects ORDER BY applied`)
	if err != nil {
		c.t.Fatal(err)
	}
	t := newTally()
	for rows.Next() {
		var id, stream string
		var seq int64
		if err := rows.Scan(&id, &stream, &seq); err != nil {
			c.t.Fatal(err)
		}
		u, ok := follow[id]
		if !ok {
			c.t.Errorf("%s: effect in B of %s, which is no follow-up in the outbox", name, id)
			continue
		}
		t.apply(u.origin, stream, seq)
		if en := byID[u.origin]; stream != en.stream || seq != en.seq {
			c.t.Errorf("%s: follow-up of %s applied as stream %q seq %d, want %q %d", name, u.origin, stream, seq, en.stream, en.seq)
		}
	}
	if err := rows.Err(); err != nil {
		c.t.Fatal(err)
	}
	lostIDs := missing(t, confirmed)
	f.lost, f.duplicated, f.outOfOrder = len(lostIDs), t.duplicated, t.outOfOrder

	// Both inboxes: every message stored once, done.
	for _, e := range []*env{a, b} {
		var fe figures
		e.checkRows(ctx, name+" (inbox "+map[*env]string{a: "A", b: "B"}[e]+")", expectation{}, 0, &fe)
		f.dead += fe.dead
		f.pending += fe.pending
	}

	c.t.Logf("figures: case=%s messages=%d sent=%d (duplicates %d, out of order %d) faults=%d lost=%d duplicated=%d out_of_order=%d dead=%d pending=%d dlq=0 forwarded=%d copies_known=%d",
		name, f.messages, f.sent, l.dups, l.outOfOrder(), f.faults, f.lost, f.duplicated, f.outOfOrder, f.dead, f.pending, len(follow), len(copies))
	if f.lost != 0 {
		c.t.Errorf("%s: %d originals without an effect in B, e.g. %v", name, f.lost, lostIDs[:min(5, len(lostIDs))])
	}
	if f.duplicated != 0 {
		c.t.Errorf("%s: %d originals applied more than once in B", name, f.duplicated)
	}
	if f.outOfOrder != 0 {
		c.t.Errorf("%s: %d effects in B out of stream order", name, f.outOfOrder)
	}
	return f
}
