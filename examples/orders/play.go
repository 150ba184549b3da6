package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/amqp"
	"github.com/inboxkit/inbox/migrations"
)

// result is the outcome of a run: the checks and whether they passed.
type result struct {
	checks []check
}

type check struct {
	ok   bool
	what string
}

func (r *result) add(ok bool, format string, args ...any) {
	r.checks = append(r.checks, check{ok: ok, what: fmt.Sprintf(format, args...)})
}

func (r *result) failed() int {
	n := 0
	for _, c := range r.checks {
		if !c.ok {
			n++
		}
	}
	return n
}

func (r *result) passed() bool { return len(r.checks) > 0 && r.failed() == 0 }

// play sets up a schema and a queue of its own, runs the service and the
// publisher, and checks the outcome.
func play(ctx context.Context, cfg config, out io.Writer) (*result, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	name := uniqueName("orders_example")
	p := newPlan(cfg.orders, cfg.duplicates, cfg.seed)
	fmt.Fprintf(out, "Orders example: %d orders × %d events, published to RabbitMQ with duplicates and out of order.\n", cfg.orders, len(topics))
	fmt.Fprintf(out, "Using schema %s in PostgreSQL and queue %s in RabbitMQ (both removed at the end).\n\n", name, name)

	pool, err := connect(ctx, cfg.postgresURL)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	if _, err := migrations.Up(ctx, pool, name); err != nil {
		return nil, fmt.Errorf("create the inbox tables: %w", err)
	}
	if !cfg.keep {
		defer dropSchema(pool, name, out)
	}
	s := newStore(name)
	if err := s.createTable(ctx, pool); err != nil {
		return nil, err
	}

	broker, err := dialBroker(cfg.amqpURL)
	if err != nil {
		return nil, err
	}
	defer broker.close()
	// At deployment time, or at start-up: the queue, and its dead-letter
	// exchange and queue.
	if err := amqp.Declare(ctx, cfg.amqpURL, *topology(name)); err != nil {
		return nil, err
	}
	if !cfg.keep {
		defer broker.remove(name, out)
	}

	svc, err := serve(ctx, cfg, pool, name, s)
	if err != nil {
		return nil, err
	}
	defer svc.stop()

	res := &result{}
	began := time.Now()

	// Round 1: some events of each order, shuffled, some sent twice.
	sent1, dups1 := p.deliveries(0)
	if err := broker.publish(ctx, name, p.rounds[0]); err != nil {
		return nil, err
	}
	fmt.Fprintf(out, "Round 1: published %d messages (%d events, %d of them sent twice), in shuffled order; the broker confirmed each.\n", sent1, sent1-dups1, dups1)
	ready, waiting := p.readyAfterRound1()
	stored1 := p.distinct(0)
	if err := waitFor(ctx, pool, name, func(c counts) bool { return c.total() == stored1 && c.done == ready }); err != nil {
		return nil, fmt.Errorf("round 1: %w", err)
	}
	c1, err := count(ctx, pool, name)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(out, "  inbox: stored %d messages, dropped %d duplicates; handled %d, held back %d whose earlier event has not come yet.\n",
		c1.total(), sent1-c1.total(), c1.done, c1.pending)
	for _, h := range waiting[:min(3, len(waiting))] {
		fmt.Fprintf(out, "    e.g. %s: %s (seq %d) waits for %s\n", h.msg.Stream, shortTopic(h.msg.Topic), h.msg.Seq, strings.Join(h.missing, " and "))
	}
	res.add(c1.total() == stored1 && c1.pending == len(waiting),
		"round 1: %d stored, %d held back for their predecessors (expected %d and %d)", c1.total(), c1.pending, stored1, len(waiting))

	// Round 2: the rest, shuffled, copies of round 1 events, and one
	// message without an ID, from a careless publisher.
	sent2, dups2 := p.deliveries(1)
	if err := broker.publish(ctx, name, p.rounds[1]); err != nil {
		return nil, err
	}
	if err := broker.publishBad(ctx, name); err != nil {
		return nil, err
	}
	fmt.Fprintf(out, "\nRound 2: published %d messages (%d remaining events, %d late copies of round 1 events), and 1 without a message ID.\n", sent2, sent2-dups2, dups2)
	all := len(p.events)
	published := sent1 + sent2 + 1
	if err := waitFor(ctx, pool, name, func(c counts) bool { return c.done == all }); err != nil {
		return nil, fmt.Errorf("round 2: %w", err)
	}
	// Once every delivery is settled, the late copies have been seen (and
	// dropped) too.
	if err := svc.waitSettled(ctx, published); err != nil {
		return nil, fmt.Errorf("round 2: %w", err)
	}
	took := time.Since(began)
	svc.stop()
	c2, err := count(ctx, pool, name)
	if err != nil {
		return nil, err
	}
	rs := svc.rcv.Stats()
	fmt.Fprintf(out, "  receiver: %d deliveries: %d stored, %d duplicates dropped, %d rejected to %s.dead (%s).\n",
		rs.Received, rs.Stored, rs.Duplicates, rs.RejectedTotal(), name, rejectReasons(rs))
	fmt.Fprintf(out, "  inbox: %d messages, %d handled, all in %s.\n", c2.total(), c2.done, took.Round(time.Millisecond))

	orders, err := s.list(ctx, pool)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(out, "\nOrders (events as they arrived → as they were applied):\n")
	arrived := p.arrivalOrder()
	outOfOrder, inOrder := 0, 0
	want := []string{"created", "paid", "shipped"}
	for _, o := range orders {
		got := arrived[o.ID]
		if !slices.Equal(got, want) {
			outOfOrder++
		}
		if slices.Equal(o.History, want) && o.Status == "shipped" && o.PaidCents != nil && *o.PaidCents == o.AmountCents {
			inOrder++
		}
		fmt.Fprintf(out, "  %s  %-8s %-24s → %-24s %-8s %8s  %s\n", o.ID, o.Customer, strings.Join(got, ", "),
			strings.Join(o.History, ", "), o.Status, cents(o.AmountCents), deref(o.Tracking))
	}

	fmt.Fprintf(out, "\nChecks:\n")
	res.add(rs.Acked == uint64(sent1+sent2) && rs.RejectedTotal() == 1,
		"every delivery settled: %d acked after being stored, %d rejected, of %d published", rs.Acked, rs.RejectedTotal(), published)
	res.add(c2.total() == all && rs.Stored == uint64(all) && rs.Duplicates == uint64(dups1+dups2),
		"each event stored once: %d rows for %d distinct events; %d duplicate deliveries dropped", c2.total(), all, rs.Duplicates)
	dead, err := broker.queueLen(name + amqp.DefaultDeadLetterQueueSuffix)
	if err != nil {
		return nil, err
	}
	res.add(dead == 1 && rs.Rejected[inbox.ReasonMissingID] == 1,
		"bad input rejected, not lost: %d message in %s.dead (%s)", dead, name, rejectReasons(rs))
	res.add(c2.done == all && c2.dead == 0 && c2.pending == 0,
		"every message handled: %d done, %d dead, %d pending", c2.done, c2.dead, c2.pending)
	res.add(s.runs.Load() == int64(all),
		"no handler ran twice: %d handler runs for %d events", s.runs.Load(), all)
	res.add(len(orders) == cfg.orders && inOrder == cfg.orders,
		"events applied in order per order: %d of %d orders went created → paid → shipped (%d of them had events arrive out of order)", inOrder, cfg.orders, outOfOrder)
	left, err := broker.queueLen(name)
	if err != nil {
		return nil, err
	}
	res.add(left == 0, "queue drained: %d messages left in %s", left, name)
	for _, c := range res.checks {
		mark := "ok  "
		if !c.ok {
			mark = "FAIL"
		}
		fmt.Fprintf(out, "  %s %s\n", mark, c.what)
	}
	return res, nil
}

func rejectReasons(st amqp.Stats) string {
	var out []string
	for reason, n := range st.Rejected {
		out = append(out, fmt.Sprintf("%d %s", n, reason))
	}
	slices.Sort(out)
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

// counts is the inbox's messages by state.
type counts struct{ pending, done, dead int }

func (c counts) total() int { return c.pending + c.done + c.dead }

func count(ctx context.Context, db *pgxpool.Pool, schema string) (counts, error) {
	var c counts
	err := db.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'done'),
		count(*) FILTER (WHERE state = 'dead') FROM `+pgx.Identifier{schema, "inbox_messages"}.Sanitize()).Scan(&c.pending, &c.done, &c.dead)
	if err != nil {
		return counts{}, fmt.Errorf("count inbox messages: %w", err)
	}
	return c, nil
}

// waitFor polls the inbox's counts until cond holds. A dead message ends
// the wait: in this example none should die.
func waitFor(ctx context.Context, db *pgxpool.Pool, schema string, cond func(counts) bool) error {
	var last counts
	for {
		c, err := count(ctx, db, schema)
		if err != nil {
			return err
		}
		last = c
		if c.dead > 0 {
			return fmt.Errorf("%d messages went dead (see inboxctl dead list, or run with -keep and -v)", c.dead)
		}
		if cond(c) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up waiting with %d pending, %d done: %w%s", last.pending, last.done, ctx.Err(), lastError(db, schema))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// lastError describes the latest handler failure, if any, for an error
// message.
func lastError(db *pgxpool.Pool, schema string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var id, msg string
	err := db.QueryRow(ctx, `SELECT message_id, last_error FROM `+pgx.Identifier{schema, "inbox_messages"}.Sanitize()+`
		WHERE last_error IS NOT NULL AND state <> 'done' ORDER BY run_at DESC LIMIT 1`).Scan(&id, &msg)
	if err != nil {
		return ""
	}
	return fmt.Sprintf("; last handler error (message %s): %s", id, msg)
}

func connect(ctx context.Context, url string) (*pgxpool.Pool, error) {
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse INBOX_POSTGRES_URL: %w", err)
	}
	pcfg.MaxConns = workers + 6 // workers, receiver, LISTEN, maintenance, and the example's own queries
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to PostgreSQL at %s: %w (is it running? set INBOX_POSTGRES_URL)", redact(pcfg.ConnString()), err)
	}
	return pool, nil
}

func dropSchema(pool *pgxpool.Pool, schema string, out io.Writer) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
		fmt.Fprintf(out, "warning: could not drop schema %s: %v\n", schema, err)
	}
}

// redact hides the password of a URL for messages.
func redact(url string) string {
	at := strings.LastIndexByte(url, '@')
	scheme := strings.Index(url, "://")
	if at < 0 || scheme < 0 {
		return url
	}
	userinfo := url[scheme+3 : at]
	if user, _, ok := strings.Cut(userinfo, ":"); ok {
		return url[:scheme+3] + user + ":xxxxx" + url[at:]
	}
	return url
}

func uniqueName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "_" + hex.EncodeToString(b)
}

func cents(c int64) string { return fmt.Sprintf("$%d.%02d", c/100, c%100) }

func deref(s *string) string {
	if s == nil {
		return "-"
	}
	return *s
}

const workers = 4
