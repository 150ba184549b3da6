package faults

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/inboxkit/inbox/amqp"
	"github.com/inboxkit/inbox/internal/sqlident"
	"github.com/inboxkit/inbox/internal/testenv"
)

// consumerBin is the consumer process the cases run: the ledger-consumer
// built once for this test binary, or the user's own from FAULTS_CONSUMER.
// relayBin is the chained cases' relay process, cmd/ledger-relay.
var consumerBin, relayBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "faults-consumer-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults: temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	build := func(name string) (string, error) {
		bin := filepath.Join(dir, name)
		out, err := exec.Command("go", "build", "-o", bin, "./cmd/"+name).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("build %s: %v\n%s", name, err, out)
		}
		return bin, nil
	}
	if relayBin, err = build("ledger-relay"); err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		return 1
	}
	consumerBin = os.Getenv("FAULTS_CONSUMER")
	if consumerBin == "" {
		if consumerBin, err = build("ledger-consumer"); err != nil {
			fmt.Fprintln(os.Stderr, "faults:", err)
			return 1
		}
	}
	return m.Run()
}

// entry is one message of the ledger. An empty stream means unordered.
type entry struct {
	id     string
	stream string
	seq    int64
}

// ledger is what a case publishes: every entry once, some twice, in an
// order that is shuffled locally, so that a stream's messages often arrive
// out of order.
type ledger struct {
	entries []entry
	sends   []entry
	dups    int
}

// newLedger makes n messages: about a fifth unordered, the rest spread over
// 50 streams with sequences from 1, plus dups duplicates, each sent again
// later.
func newLedger(n, dups int, seed uint64) *ledger {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	l := &ledger{dups: dups}
	unordered := n / 5
	for i := 0; i < unordered; i++ {
		l.entries = append(l.entries, entry{id: fmt.Sprintf("u-%05d", i)})
	}
	const streams = 50
	next := make([]int64, streams)
	for i := unordered; i < n; i++ {
		s := i % streams
		next[s]++
		l.entries = append(l.entries, entry{id: fmt.Sprintf("s%02d-%04d", s, next[s]), stream: fmt.Sprintf("s%02d", s), seq: next[s]})
	}
	// Interleave unordered and stream messages, keeping each stream's
	// messages in order, then swap neighbours within windows of 8 so that
	// some sequences arrive before their predecessors.
	l.sends = append(l.sends, l.entries...)
	rng.Shuffle(len(l.sends), func(i, j int) { l.sends[i], l.sends[j] = l.sends[j], l.sends[i] })
	sortStreamsInPlace(l.sends)
	for w := 0; w+8 <= len(l.sends); w += 8 {
		win := l.sends[w : w+8]
		rng.Shuffle(len(win), func(i, j int) { win[i], win[j] = win[j], win[i] })
	}
	for i := 0; i < dups; i++ {
		e := l.entries[rng.IntN(len(l.entries))]
		at := rng.IntN(len(l.sends) + 1)
		l.sends = append(l.sends[:at], append([]entry{e}, l.sends[at:]...)...)
	}
	return l
}

// sortStreamsInPlace keeps the positions that hold each stream's messages
// but puts the messages in sequence order within them.
func sortStreamsInPlace(sends []entry) {
	pos := map[string][]int{}
	for i, e := range sends {
		if e.stream != "" {
			pos[e.stream] = append(pos[e.stream], i)
		}
	}
	for _, idx := range pos {
		es := make([]entry, len(idx))
		for k, i := range idx {
			es[k] = sends[i]
		}
		sort.Slice(es, func(a, b int) bool { return es[a].seq < es[b].seq })
		for k, i := range idx {
			sends[i] = es[k]
		}
	}
}

// outOfOrder counts sends whose sequence is lower than an earlier send of
// the same stream: how much the ledger itself is out of order.
func (l *ledger) outOfOrder() int {
	top := map[string]int64{}
	n := 0
	for _, e := range l.sends {
		if e.stream == "" {
			continue
		}
		if e.seq < top[e.stream] {
			n++
		}
		top[e.stream] = max(top[e.stream], e.seq)
	}
	return n
}

// env is one case's schema, queue and consumer processes.
type env struct {
	t       *testing.T
	pool    *pgxpool.Pool
	pgURL   string
	schema  string
	q       string // quoted schema
	amqpURL string
	queue   string

	mu      sync.Mutex
	procs   []*proc
	nprocs  int
	confirm map[string]bool // IDs the broker confirmed
	faults  int
}

func setup(t *testing.T) *env {
	t.Helper()
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		t.Skip("rabbitmqctl not available (the broker must be local): ", err)
	}
	pool, schema := testenv.Schema(t, 4)
	e := &env{
		t:       t,
		pool:    pool,
		pgURL:   testenv.PostgresURL(),
		schema:  schema,
		q:       sqlident.Quote(schema),
		amqpURL: testenv.AMQPURL(),
		queue:   testenv.UniqueName("faults"),
		confirm: map[string]bool{},
	}
	// The effects table has no unique key on message_id on purpose: a
	// message applied twice shows as two rows instead of a failed handler.
	e.exec(`CREATE TABLE ` + e.q + `.effects (
		applied bigserial PRIMARY KEY,
		message_id text NOT NULL,
		stream text NOT NULL,
		seq bigint NOT NULL)`)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := amqp.Declare(ctx, e.amqpURL, amqp.Topology{Queue: e.queue}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.killAll()
		e.deleteTopology()
	})
	return e
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := e.pool.Exec(ctx, sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

func (e *env) count(sql string, args ...any) int {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var n int
	if err := e.pool.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// channel opens a channel on a connection of its own; closing the
// connection closes both.
func (e *env) channel() (*amqp091.Connection, *amqp091.Channel, error) {
	conn, err := amqp091.Dial(e.amqpURL)
	if err != nil {
		return nil, nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, ch, nil
}

func (e *env) deleteTopology() {
	conn, ch, err := e.channel()
	if err != nil {
		e.t.Logf("delete queue %s: %v", e.queue, err)
		return
	}
	defer conn.Close()
	for _, q := range []string{e.queue, e.queue + amqp.DefaultDeadLetterQueueSuffix} {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			e.t.Logf("delete queue %s: %v", q, err)
			return // the error closed the channel
		}
	}
	if err := ch.ExchangeDelete(e.queue+amqp.DefaultDeadLetterExchangeSuffix, false, false); err != nil {
		e.t.Logf("delete exchange: %v", err)
	}
}

// deleteQueueOnly deletes the case's queue, leaving its dead-letter
// exchange and queue.
func (e *env) deleteQueueOnly() {
	e.t.Helper()
	conn, ch, err := e.channel()
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close()
	if _, err := ch.QueueDelete(e.queue, false, false, false); err != nil {
		e.t.Fatalf("delete queue %s: %v", e.queue, err)
	}
}

// proc is one consumer process.
type proc struct {
	name   string
	cmd    *exec.Cmd
	log    string // path of its stderr
	exited chan struct{}
	err    error // Wait's, once exited is closed
}

// start runs a consumer process named name (its AMQP connection_name and
// PostgreSQL application_name) with extra environment variables.
func (e *env) start(name string, extra ...string) *proc {
	e.t.Helper()
	return e.startBin(consumerBin, name, extra...)
}

// startBin is start for the process bin: the consumer or the relay.
func (e *env) startBin(bin, name string, extra ...string) *proc {
	e.t.Helper()
	e.mu.Lock()
	e.nprocs++
	n := e.nprocs
	e.mu.Unlock()
	p := &proc{
		name:   e.queue + " " + name,
		log:    filepath.Join(e.t.TempDir(), fmt.Sprintf("consumer-%d.log", n)),
		exited: make(chan struct{}),
	}
	f, err := os.Create(p.log)
	if err != nil {
		e.t.Fatal(err)
	}
	p.cmd = exec.Command(bin)
	p.cmd.Env = append(os.Environ(),
		"FAULTS_POSTGRES_URL="+e.pgURL,
		"FAULTS_SCHEMA="+e.schema,
		"FAULTS_AMQP_URL="+e.amqpURL,
		"FAULTS_QUEUE="+e.queue,
		"FAULTS_NAME="+p.name,
	)
	p.cmd.Env = append(p.cmd.Env, extra...)
	p.cmd.Stdout = f
	p.cmd.Stderr = f
	if err := p.cmd.Start(); err != nil {
		f.Close()
		e.t.Fatalf("start consumer: %v", err)
	}
	// The waiter goroutine ends when the process does; killAll makes sure
	// it does by the end of the test.
	go func() {
		p.err = p.cmd.Wait()
		f.Close()
		close(p.exited)
	}()
	e.mu.Lock()
	e.procs = append(e.procs, p)
	e.mu.Unlock()
	return p
}

// signal sends sig and waits up to timeout for the process to exit.
func (p *proc) signal(t *testing.T, sig syscall.Signal, timeout time.Duration) error {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("signal %v: %v", sig, err)
	}
	select {
	case <-p.exited:
		return p.err
	case <-time.After(timeout):
		t.Fatalf("consumer %s did not exit within %s of %v\n%s", p.name, timeout, sig, p.tail())
		return nil
	}
}

func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// logText is the process's output so far.
func (p *proc) logText() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// tail is the end of the process's output, for failure messages.
func (p *proc) tail() string {
	s := p.logText()
	if len(s) > 4000 {
		s = "..." + s[len(s)-4000:]
	}
	return s
}

// killAll SIGKILLs every process still running and waits for it.
func (e *env) killAll() {
	e.mu.Lock()
	procs := append([]*proc(nil), e.procs...)
	e.mu.Unlock()
	for _, p := range procs {
		if p.running() {
			_ = p.cmd.Process.Kill()
		}
		<-p.exited
		if e.t.Failed() {
			e.t.Logf("consumer %s output:\n%s", p.name, p.tail())
		}
	}
}

// stopAll stops every running process with SIGTERM and checks that each
// exits cleanly.
func (e *env) stopAll() {
	e.t.Helper()
	e.mu.Lock()
	procs := append([]*proc(nil), e.procs...)
	e.mu.Unlock()
	for _, p := range procs {
		if !p.running() {
			continue
		}
		if err := p.signal(e.t, syscall.SIGTERM, 30*time.Second); err != nil {
			e.t.Errorf("consumer %s exited after SIGTERM with %v\n%s", p.name, err, p.tail())
		}
	}
}

func (e *env) fault() {
	e.mu.Lock()
	e.faults++
	e.mu.Unlock()
}

// publishing is a publisher running in the background.
type publishing struct {
	done chan struct{}
	err  error
	// republished counts messages sent again for want of a confirm, and
	// retryCause is the first reason (publishThroughRestarts only).
	republished int
	retryCause  error
}

// publish sends the ledger's sends in chunks of chunk messages, waiting for
// the broker's confirms of each chunk and pausing pause between chunks, so
// that faults land while messages arrive. Only confirmed IDs are expected.
func (e *env) publish(l *ledger, chunk int, pause time.Duration) *publishing {
	pub := &publishing{done: make(chan struct{})}
	go func() {
		defer close(pub.done)
		pub.err = e.publishSync(l.sends, chunk, pause, nil)
	}()
	return pub
}

func (pub *publishing) wait(t *testing.T) {
	t.Helper()
	select {
	case <-pub.done:
	case <-time.After(60 * time.Second):
		t.Fatal("publisher did not finish within 60s")
	}
	if pub.err != nil {
		t.Fatalf("publish: %v", pub.err)
	}
}

// publishSync publishes entries; custom, when not nil, builds each
// publishing instead of the default mapping.
func (e *env) publishSync(entries []entry, chunk int, pause time.Duration, custom func(entry) amqp091.Publishing) error {
	conn, err := amqp091.DialConfig(e.amqpURL, amqp091.Config{
		Properties: amqp091.Table{"connection_name": e.queue + " publisher"},
	})
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		return fmt.Errorf("confirm mode: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for start := 0; start < len(entries); start += chunk {
		part := entries[start:min(start+chunk, len(entries))]
		confs := make([]*amqp091.DeferredConfirmation, len(part))
		for i, en := range part {
			p := ledgerPublishing(en)
			if custom != nil {
				p = custom(en)
			}
			confs[i], err = ch.PublishWithDeferredConfirmWithContext(ctx, "", e.queue, true, false, p)
			if err != nil {
				return fmt.Errorf("publish %s: %w", en.id, err)
			}
		}
		for i, c := range confs {
			ok, err := c.WaitContext(ctx)
			if err != nil {
				return fmt.Errorf("confirm of %s: %w", part[i].id, err)
			}
			if ok && custom == nil {
				e.mu.Lock()
				e.confirm[part[i].id] = true
				e.mu.Unlock()
			}
		}
		if pause > 0 {
			time.Sleep(pause)
		}
	}
	return nil
}

func ledgerPublishing(en entry) amqp091.Publishing {
	p := amqp091.Publishing{
		MessageId:    en.id,
		Type:         "ledger",
		DeliveryMode: amqp091.Persistent,
		Body:         []byte(`{"id":"` + en.id + `"}`),
	}
	if en.stream != "" {
		p.Headers = amqp091.Table{"x-stream-key": en.stream, "x-sequence": en.seq}
	}
	return p
}

// expectation says how a case is meant to end, besides every confirmed
// message applied once.
type expectation struct {
	// failing IDs end dead with a last_error containing deadReason.
	failing    map[string]bool
	deadReason map[string]string
	// dlq is how many deliveries the dead-letter queue must hold.
	dlq int
}

// figures are a case's outcome, logged on one line.
type figures struct {
	messages, sent, faults, lost, duplicated, outOfOrder, dead, pending int
}

// check waits for the consumers to finish the ledger, stops them with
// SIGTERM, and verifies the outcome from the database and the broker.
func (e *env) check(name string, l *ledger, x expectation) figures {
	e.t.Helper()
	e.mu.Lock()
	confirmed := make(map[string]bool, len(e.confirm))
	for id := range e.confirm {
		confirmed[id] = true
	}
	f := figures{messages: len(confirmed), sent: len(l.sends), faults: e.faults}
	e.mu.Unlock()
	if len(confirmed) != len(l.entries) {
		e.t.Errorf("broker confirmed %d of %d messages", len(confirmed), len(l.entries))
	}

	// What must be applied: confirmed, not failing, and not after a failing
	// message of the same stream (that stream is parked).
	blocked := map[string]int64{}
	for _, en := range l.entries {
		if x.failing[en.id] && en.stream != "" {
			if s, ok := blocked[en.stream]; !ok || en.seq < s {
				blocked[en.stream] = en.seq
			}
		}
	}
	want := map[string]entry{}
	held := 0
	for _, en := range l.entries {
		if !confirmed[en.id] || x.failing[en.id] {
			continue
		}
		if s, ok := blocked[en.stream]; ok && en.stream != "" && en.seq > s {
			held++
			continue
		}
		want[en.id] = en
	}

	// Wait for the effects, the dead messages and an empty queue.
	deadline := time.Now().Add(60 * time.Second)
	for {
		applied := e.count(`SELECT count(DISTINCT message_id) FROM ` + e.q + `.effects`)
		dead := e.count(`SELECT count(*) FROM ` + e.q + `.inbox_messages WHERE state = 'dead'`)
		pending := e.count(`SELECT count(*) FROM ` + e.q + `.inbox_messages WHERE state = 'pending'`)
		if applied >= len(want) && dead >= len(x.failing) && pending <= held {
			break
		}
		if time.Now().After(deadline) {
			// Go on to the figures, which say what is missing.
			e.t.Errorf("%s: after 60s: %d of %d applied, %d dead (want %d), %d pending (want %d)",
				name, applied, len(want), dead, len(x.failing), pending, held)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	e.waitQueueEmpty()
	e.stopAll()

	// The broker: nothing left in the queue once the consumers are gone
	// (their unacked deliveries would be back), the dead-letter queue as
	// expected.
	time.Sleep(300 * time.Millisecond) // the broker requeues asynchronously
	if q := e.inspect(e.queue); q.Messages != 0 {
		e.t.Errorf("%s: queue holds %d messages after the consumers stopped", name, q.Messages)
	}
	if q := e.inspect(e.queue + amqp.DefaultDeadLetterQueueSuffix); q.Messages != x.dlq {
		e.t.Errorf("%s: dead-letter queue holds %d messages, want %d", name, q.Messages, x.dlq)
	}

	// The database: effects once each, in stream order.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rows, err := e.pool.Query(ctx, `SELECT message_id, stream, seq FROM `+e.q+`.effects ORDER BY applied`)
	if err != nil {
		e.t.Fatal(err)
	}
	t := newTally()
	for rows.Next() {
		var id, stream string
		var seq int64
		if err := rows.Scan(&id, &stream, &seq); err != nil {
			e.t.Fatal(err)
		}
		if t.apply(id, stream, seq) == 1 {
			if _, ok := want[id]; !ok {
				e.t.Errorf("%s: effect of unexpected message %q", name, id)
			}
		}
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	lostIDs := missing(t, want)
	f.lost, f.duplicated, f.outOfOrder = len(lostIDs), t.duplicated, t.outOfOrder

	// The inbox: one row per message, dead only the failing ones with
	// their reason, pending only those behind a parked stream.
	e.checkRows(ctx, name, x, held, &f)

	e.t.Logf("figures: case=%s messages=%d sent=%d (duplicates %d, out of order %d) faults=%d lost=%d duplicated=%d out_of_order=%d dead=%d pending=%d dlq=%d",
		name, f.messages, f.sent, l.dups, l.outOfOrder(), f.faults, f.lost, f.duplicated, f.outOfOrder, f.dead, f.pending, x.dlq)
	if f.lost != 0 {
		e.t.Errorf("%s: %d messages lost, e.g. %v", name, f.lost, lostIDs[:min(5, len(lostIDs))])
	}
	if f.duplicated != 0 {
		e.t.Errorf("%s: %d messages applied more than once", name, f.duplicated)
	}
	if f.outOfOrder != 0 {
		e.t.Errorf("%s: %d effects out of stream order", name, f.outOfOrder)
	}
	return f
}

func (e *env) checkRows(ctx context.Context, name string, x expectation, held int, f *figures) {
	e.t.Helper()
	if n := e.count(`SELECT count(*) FROM (SELECT message_id FROM ` + e.q + `.inbox_messages GROUP BY source, message_id HAVING count(*) > 1) d`); n != 0 {
		e.t.Errorf("%s: %d message IDs stored more than once", name, n)
	}
	rows, err := e.pool.Query(ctx, `SELECT message_id, state, coalesce(last_error, '') FROM `+e.q+`.inbox_messages WHERE state <> 'done'`)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, state, lastErr string
		if err := rows.Scan(&id, &state, &lastErr); err != nil {
			e.t.Fatal(err)
		}
		switch state {
		case "dead":
			f.dead++
			if !x.failing[id] {
				e.t.Errorf("%s: message %s is dead: %s", name, id, lastErr)
			} else if !strings.Contains(lastErr, x.deadReason[id]) {
				e.t.Errorf("%s: dead message %s has last_error %q, want it to contain %q", name, id, lastErr, x.deadReason[id])
			}
		case "pending":
			f.pending++
		}
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	if f.pending != held {
		e.t.Errorf("%s: %d messages pending, want %d", name, f.pending, held)
	}
	if f.dead != len(x.failing) {
		e.t.Errorf("%s: %d messages dead, want %d", name, f.dead, len(x.failing))
	}
}

// waitQueueEmpty waits until the queue has no ready and no unacked
// messages while the consumers run.
func (e *env) waitQueueEmpty() {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ready, unacked, ok := e.queueCounts()
		if ok && ready == 0 && unacked == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("queue %s still has %d ready and %d unacked after 30s", e.queue, ready, unacked)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// queueCounts asks rabbitmqctl for the queue's ready and unacked counts.
func (e *env) queueCounts() (ready, unacked int, ok bool) {
	out := rabbitmqctl(e.t, "list_queues", "name", "messages_ready", "messages_unacknowledged", "-s")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == e.queue {
			r, err1 := strconv.Atoi(f[1])
			u, err2 := strconv.Atoi(f[2])
			return r, u, err1 == nil && err2 == nil
		}
	}
	return 0, 0, false
}

// inspect declares queue passively on a connection of its own.
func (e *env) inspect(queue string) amqp091.Queue {
	e.t.Helper()
	conn, ch, err := e.channel()
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		e.t.Fatalf("inspect queue %s: %v", queue, err)
	}
	return q
}

// rabbitmqctl runs the broker's CLI.
func rabbitmqctl(t *testing.T, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command("rabbitmqctl", args...)
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("rabbitmqctl %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// closeConnections closes, broker side, the connections whose
// connection_name is name (only this case's), and returns how many.
func closeConnections(t *testing.T, name string) int {
	t.Helper()
	out := rabbitmqctl(t, "list_connections", "pid", "client_properties", "-s")
	closed := 0
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, `{"connection_name","`+name+`"}`) {
			continue
		}
		rabbitmqctl(t, "close_connection", strings.Fields(line)[0], "forced by the fault suite")
		closed++
	}
	return closed
}

// connected waits until the broker lists a connection named name.
func (e *env) connected(name string, timeout time.Duration) bool {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		out := rabbitmqctl(e.t, "list_connections", "client_properties", "-s")
		if strings.Contains(out, `{"connection_name","`+name+`"}`) {
			return true
		}
		time.Sleep(200 * time.Millisecond)
	}
	return false
}

// terminateBackends ends the PostgreSQL backends whose application_name is
// name and whose last query matches like, and returns how many.
func (e *env) terminateBackends(name, like string) int {
	e.t.Helper()
	return e.count(`SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE application_name = $1 AND query LIKE $2 AND pid <> pg_backend_pid()) k`, name, like)
}

// cpuTicks is the process's user plus system time, in clock ticks.
func cpuTicks(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Skip("no /proc: ", err)
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces: state is field 3, utime 14 and stime 15.
	s := string(b)
	rest := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.Atoi(rest[11])
	stime, _ := strconv.Atoi(rest[12])
	return utime + stime
}

// sleepJitter sleeps between lo and hi.
func sleepJitter(rng *rand.Rand, lo, hi time.Duration) {
	time.Sleep(lo + time.Duration(rng.Int64N(int64(hi-lo)+1)))
}

// tally counts a ledger's effects in the order they were applied: how
// often each key was applied, the repeats, and the effects that did not
// raise their stream's sequence number.
type tally struct {
	seen                   map[string]int
	top                    map[string]int64
	duplicated, outOfOrder int
}

func newTally() *tally { return &tally{seen: map[string]int{}, top: map[string]int64{}} }

// apply counts one effect of key, on stream at seq (stream "" for none),
// and returns how often key has been applied now.
func (t *tally) apply(key, stream string, seq int64) int {
	t.seen[key]++
	if t.seen[key] > 1 {
		t.duplicated++
	}
	if stream != "" {
		if seq <= t.top[stream] {
			t.outOfOrder++
		}
		t.top[stream] = max(t.top[stream], seq)
	}
	return t.seen[key]
}

// missing lists, sorted, the keys of want that were never applied.
func missing[V any](t *tally, want map[string]V) []string {
	var out []string
	for key := range want {
		if t.seen[key] == 0 {
			out = append(out, key)
		}
	}
	sort.Strings(out)
	return out
}
