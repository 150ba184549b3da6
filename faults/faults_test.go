package faults

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/amqp"
)

// Each case publishes a ledger of this many messages (plus duplicates) in
// chunks, with a pause between chunks so that the faults land while
// messages arrive and are handled.
const (
	ledgerSize = 2000
	ledgerDups = 100
	chunk      = 100
	pause      = 150 * time.Millisecond
)

// TestLedger is the baseline: no fault, and the check every other case
// reuses. With FAULTS_CONSUMER set it runs the user's own consumer.
func TestLedger(t *testing.T) {
	t.Parallel()
	e := setup(t)
	l := newLedger(ledgerSize, ledgerDups, 1)
	e.start("consumer")
	e.publish(l, chunk, pause).wait(t)
	e.check("ledger", l, expectation{})
}

// TestKillMidRun SIGKILLs the consumer several times while messages arrive
// and restarts it: deliveries it held come back, handlers it ran roll back.
func TestKillMidRun(t *testing.T) {
	t.Parallel()
	e := setup(t)
	l := newLedger(ledgerSize, ledgerDups, 2)
	rng := rand.New(rand.NewPCG(2, 2))
	p := e.start("consumer")
	pub := e.publish(l, chunk, pause)
	for i := 0; i < 4; i++ {
		sleepJitter(rng, 400*time.Millisecond, 800*time.Millisecond)
		p.signal(t, syscall.SIGKILL, 10*time.Second)
		e.fault()
		p = e.start("consumer")
	}
	pub.wait(t)
	e.check("sigkill", l, expectation{})
}

// TestKillInAckWindow SIGKILLs the consumer after a batch is committed and
// before it is acked (the consumer sleeps there to widen the window): the
// broker redelivers the batch, whose messages must be recognised as
// duplicates and not applied again.
func TestKillInAckWindow(t *testing.T) {
	t.Parallel()
	needLedgerConsumer(t)
	e := setup(t)
	l := newLedger(ledgerSize, ledgerDups, 3)
	const window = "FAULTS_ACK_DELAY=300ms"
	p := e.start("consumer", window)
	pub := e.publish(l, chunk, pause)
	for i := 0; i < 3; i++ {
		// Wait for the consumer to log that a batch with new messages is
		// committed and waiting for its ack, then kill it: those messages
		// are stored but their deliveries unacked.
		seen := len(windowLines(p.logText()))
		deadline := time.Now().Add(20 * time.Second)
		for {
			lines := windowLines(p.logText())
			if len(lines) > seen && !strings.Contains(lines[len(lines)-1], " new=0 ") {
				break
			}
			seen = len(lines)
			if time.Now().After(deadline) {
				t.Fatalf("consumer never reached the commit→ack window with new messages\n%s", p.tail())
			}
			time.Sleep(5 * time.Millisecond)
		}
		p.signal(t, syscall.SIGKILL, 10*time.Second)
		e.fault()
		p = e.start("consumer", window)
	}
	pub.wait(t)
	e.check("sigkill-commit-ack", l, expectation{})
}

// needLedgerConsumer skips a case that relies on the ledger-consumer's
// own hooks (FAULTS_ACK_DELAY, failing IDs, FAULTS_NO_TOPOLOGY) when the
// user runs the suite with a consumer of their own.
func needLedgerConsumer(t *testing.T) {
	if os.Getenv("FAULTS_CONSUMER") != "" {
		t.Skip("needs the ledger-consumer's test hooks; FAULTS_CONSUMER is set")
	}
}

// ackWindowLog is what the consumer logs when it enters the window.
const ackWindowLog = "batch committed; ack delayed"

// windowLines are the consumer's log lines of the commit→ack window.
func windowLines(log string) []string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, ackWindowLog) && strings.HasSuffix(line, "ms") {
			out = append(out, line)
		}
	}
	return out
}

// TestGracefulRestart stops the consumer with SIGTERM several times: it must
// drain (store and ack the batch in hand, finish its handlers) and exit 0,
// and its successor must pick up the rest.
func TestGracefulRestart(t *testing.T) {
	t.Parallel()
	e := setup(t)
	l := newLedger(ledgerSize, ledgerDups, 4)
	rng := rand.New(rand.NewPCG(4, 4))
	p := e.start("consumer")
	pub := e.publish(l, chunk, pause)
	for i := 0; i < 3; i++ {
		sleepJitter(rng, 500*time.Millisecond, 900*time.Millisecond)
		if err := p.signal(t, syscall.SIGTERM, 30*time.Second); err != nil {
			t.Fatalf("consumer exited after SIGTERM with %v\n%s", err, p.tail())
		}
		if !strings.Contains(p.logText(), "ledger-consumer stopped") {
			t.Errorf("consumer did not log a clean stop\n%s", p.tail())
		}
		e.fault()
		p = e.start("consumer")
	}
	pub.wait(t)
	e.check("sigterm", l, expectation{})
}

// TestConnectionsClosed closes the consumer's AMQP connections from the
// broker side several times: it reconnects, and deliveries unacked on the
// dead channel are redelivered.
func TestConnectionsClosed(t *testing.T) {
	t.Parallel()
	e := setup(t)
	l := newLedger(ledgerSize, ledgerDups, 5)
	p := e.start("consumer")
	if !e.connected(p.name, 15*time.Second) {
		t.Fatalf("consumer never connected\n%s", p.tail())
	}
	pub := e.publish(l, chunk, pause)
	for i := 0; i < 4; i++ {
		if n := closeConnections(t, p.name); n == 0 {
			t.Fatalf("no connection named %q to close", p.name)
		}
		e.fault()
		if !e.connected(p.name, 15*time.Second) {
			t.Fatalf("consumer did not reconnect\n%s", p.tail())
		}
		time.Sleep(300 * time.Millisecond)
	}
	pub.wait(t)
	e.check("amqp-close", l, expectation{})
}

// TestBackendsTerminated terminates every PostgreSQL backend of the
// consumer several times: stores and handler transactions fail and are
// retried.
func TestBackendsTerminated(t *testing.T) {
	t.Parallel()
	e := setup(t)
	l := newLedger(ledgerSize, ledgerDups, 6)
	p := e.start("consumer")
	pub := e.publish(l, chunk, pause)
	killed := 0
	for i := 0; i < 4; i++ {
		time.Sleep(600 * time.Millisecond)
		killed += e.terminateBackends(p.name, "%")
		e.fault()
	}
	pub.wait(t)
	if killed == 0 {
		t.Fatal("no backend of the consumer was found to terminate")
	}
	if !p.running() {
		t.Fatalf("consumer exited\n%s", p.tail())
	}
	e.check("pg-terminate", l, expectation{})
	t.Logf("terminated %d backends", killed)
}

// TestListenKilled terminates the consumer's LISTEN connection: work must
// go on (by polling, and the inbox reconnects the listener).
func TestListenKilled(t *testing.T) {
	t.Parallel()
	e := setup(t)
	l := newLedger(ledgerSize, ledgerDups, 7)
	p := e.start("consumer")
	pub := e.publish(l, chunk, pause)
	killed := 0
	for i := 0; i < 3; i++ {
		time.Sleep(700 * time.Millisecond)
		killed += e.terminateBackends(p.name, "LISTEN %")
		e.fault()
	}
	pub.wait(t)
	if killed == 0 {
		t.Fatal("no LISTEN backend of the consumer was found")
	}
	e.check("listen-kill", l, expectation{})
	t.Logf("terminated %d LISTEN backends", killed)
}

// TestTwoConsumers runs two consumer processes on the same queue and inbox,
// one of them killed and restarted midway.
func TestTwoConsumers(t *testing.T) {
	t.Parallel()
	e := setup(t)
	l := newLedger(ledgerSize, ledgerDups, 8)
	a := e.start("consumer-a")
	e.start("consumer-b")
	pub := e.publish(l, chunk, pause)
	time.Sleep(time.Second)
	a.signal(t, syscall.SIGKILL, 10*time.Second)
	e.fault()
	e.start("consumer-a")
	pub.wait(t)
	e.check("two-consumers", l, expectation{})
}

// TestFailingHandler makes the handler fail permanently for some messages
// and panic for others: those end dead with their reason, a stream whose
// message died is parked with the rest of it pending, and every other
// message is applied as usual.
func TestFailingHandler(t *testing.T) {
	t.Parallel()
	needLedgerConsumer(t)
	e := setup(t)
	l := newLedger(ledgerSize, ledgerDups, 9)
	x := expectation{failing: map[string]bool{}, deadReason: map[string]string{}}
	parkedStream := ""
	for i := range l.entries {
		en := &l.entries[i]
		var prefix string
		switch {
		case en.stream == "" && i%97 == 3:
			prefix = "fail-"
		case en.stream == "" && i%89 == 5:
			prefix = "panic-"
		case en.stream != "" && parkedStream == "" && en.seq == 5:
			prefix, parkedStream = "fail-", en.stream
		default:
			continue
		}
		old := en.id
		en.id = prefix + en.id
		for j := range l.sends {
			if l.sends[j].id == old {
				l.sends[j].id = en.id
			}
		}
		x.failing[en.id] = true
		e.fault()
		x.deadReason[en.id] = map[string]string{"fail-": "made to fail", "panic-": "panic"}[prefix]
	}
	e.start("consumer")
	e.publish(l, chunk, pause).wait(t)
	f := e.check("failing-handler", l, x)
	if f.dead == 0 {
		t.Fatal("no message died")
	}
	reason := e.parkedReason(parkedStream)
	if !strings.Contains(reason, "dead") {
		t.Errorf("stream %s parked_reason %q, want it parked by its dead message", parkedStream, reason)
	}
}

// parkedReason is a stream's parked_reason, "" when it is not parked.
func (e *env) parkedReason(stream string) string {
	e.t.Helper()
	var reason *string
	ctx := e.t.Context()
	err := e.pool.QueryRow(ctx, `SELECT parked_reason FROM `+e.q+`.inbox_streams WHERE stream = $1`, stream).Scan(&reason)
	if err != nil {
		e.t.Fatalf("stream %s: %v", stream, err)
	}
	if reason == nil {
		return ""
	}
	return *reason
}

// TestMalformed publishes messages the receiver must refuse (no ID, a bad
// sequence, an oversize body, a stream without a sequence) among the
// ledger: they go to the dead-letter queue, with the reason logged, and the
// ledger is unaffected.
func TestMalformed(t *testing.T) {
	t.Parallel()
	e := setup(t)
	l := newLedger(ledgerSize, ledgerDups, 10)
	p := e.start("consumer")
	pub := e.publish(l, chunk, pause)
	bad := []struct {
		reason string
		p      amqp091.Publishing
	}{
		{inbox.ReasonMissingID, amqp091.Publishing{Type: "ledger", Body: []byte(`{}`)}},
		{inbox.ReasonBadSequence, amqp091.Publishing{MessageId: "bad-seq", Type: "ledger",
			Headers: amqp091.Table{"x-stream-key": "s00", "x-sequence": "one"}}},
		{inbox.ReasonBadSequence, amqp091.Publishing{MessageId: "no-seq", Type: "ledger",
			Headers: amqp091.Table{"x-stream-key": "s00"}}},
		{amqp.ReasonBadStream, amqp091.Publishing{MessageId: "bad-stream", Type: "ledger",
			Headers: amqp091.Table{"x-stream-key": amqp091.Table{"a": int32(1)}, "x-sequence": int32(1)}}},
		{inbox.ReasonBodyTooLarge, amqp091.Publishing{MessageId: "huge", Type: "ledger",
			Body: make([]byte, inbox.DefaultMaxBodyBytes+1)}},
	}
	entries := make([]entry, len(bad))
	for i := range bad {
		entries[i] = entry{id: fmt.Sprint(i)}
	}
	err := e.publishSync(entries, len(entries), 0, func(en entry) amqp091.Publishing {
		var i int
		fmt.Sscan(en.id, &i)
		return bad[i].p
	})
	if err != nil {
		t.Fatal(err)
	}
	for range bad {
		e.fault()
	}
	pub.wait(t)
	e.check("malformed", l, expectation{dlq: len(bad)})
	logs := p.logText()
	for _, b := range bad {
		if !strings.Contains(logs, b.reason) {
			t.Errorf("consumer did not log rejection reason %q", b.reason)
		}
	}
}

// TestQueueDeleted deletes the queue under a consumer that does not
// declare it: it must log a clear error, stay up without burning CPU, and
// resume once the queue is back.
func TestQueueDeleted(t *testing.T) {
	t.Parallel()
	needLedgerConsumer(t)
	e := setup(t)
	l := newLedger(ledgerSize/4, ledgerDups/4, 11)
	p := e.start("consumer", "FAULTS_NO_TOPOLOGY=1")
	if !e.connected(p.name, 15*time.Second) {
		t.Fatalf("consumer never connected\n%s", p.tail())
	}
	e.deleteQueueOnly()
	e.fault()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(p.logText(), "queue not found") {
		if time.Now().After(deadline) {
			t.Fatalf("no clear error logged after the queue was deleted\n%s", p.tail())
		}
		time.Sleep(100 * time.Millisecond)
	}
	before := cpuTicks(t, p.cmd.Process.Pid)
	time.Sleep(3 * time.Second)
	used := cpuTicks(t, p.cmd.Process.Pid) - before
	if !p.running() {
		t.Fatalf("consumer exited after the queue was deleted\n%s", p.tail())
	}
	// 3 s is 300 ticks at the usual 100 Hz; a retry loop spinning would use
	// most of them, one waiting with backoff almost none.
	if used > 60 {
		t.Errorf("consumer used %d clock ticks of CPU in 3s while the queue was missing", used)
	}
	attempts := strings.Count(p.logText(), "queue not found")
	t.Logf("queue missing: %d CPU ticks in 3s, %d reconnect errors logged", used, attempts)
	if attempts > 15 {
		t.Errorf("%d reconnect errors logged: the consumer retries without backing off", attempts)
	}
	// Put the queue back: the consumer resumes.
	if err := amqp.Declare(t.Context(), e.amqpURL, amqp.Topology{Queue: e.queue}); err != nil {
		t.Fatal(err)
	}
	e.publish(l, chunk, pause).wait(t)
	e.check("queue-deleted", l, expectation{})
}
