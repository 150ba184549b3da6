// Command ledger-consumer is the consumer process of the fault-injection
// suite (package faults): an inbox fed by an amqp.Receiver whose handler
// writes one effect row per message, in the handler's transaction, so the
// suite can count from the database what was applied, and in which order.
//
// It is configured by the environment only:
//
//	FAULTS_POSTGRES_URL  PostgreSQL URL (required)
//	FAULTS_SCHEMA        migrated inbox schema holding the effects table (required)
//	FAULTS_AMQP_URL      broker URL (required)
//	FAULTS_QUEUE         queue to consume; its topology is declared (required)
//	FAULTS_NAME          AMQP connection_name and PostgreSQL application_name,
//	                     so the suite can find and kill this process's
//	                     connections (default ledger-consumer)
//	FAULTS_ACK_DELAY     sleep after a batch is committed and before it is
//	                     acked, to widen the commit→ack window (default 0)
//	FAULTS_WORKERS       inbox workers (default 4)
//	FAULTS_NO_TOPOLOGY   when set, the receiver does not declare the queue,
//	                     so a deleted queue stays missing
//	FAULTS_FORWARD_QUEUE when set, the handler also enqueues one follow-up
//	                     per message to this queue through the schema's
//	                     outbox, in its transaction (the chained cases; a
//	                     relay, cmd/ledger-relay, publishes them)
//
// Messages whose ID starts with "fail-" fail permanently and those starting
// with "panic-" make the handler panic: the suite checks that they end dead
// and that nothing else is disturbed. Those starting with "exit-" make the
// process exit at once with status ExitCode, as a Go fatal error or an OOM
// kill would end it: the suite restarts it and checks that they end dead
// ("process died during the handler") after MaxAttempts runs alone.
//
// A follow-up has an ID derived from the message's (so a retried handler
// enqueues the same one), the message's stream (its sequence is the
// outbox's), its body, type "ledger", and the message's ID in the header
// OriginHeader, by which the suite matches follow-ups with the ledger.
//
// SIGTERM or SIGINT stops it gracefully: the receiver stores and acks the
// batch in hand, then the inbox finishes the handlers in flight.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/amqp"
	"github.com/inboxkit/inbox/internal/sqlident"
)

// Topic is the ledger's one topic.
const Topic = "ledger"

// ExitCode is the status the process exits with for "exit-" messages.
const ExitCode = 7

// OriginHeader carries, on a follow-up, the ID of the message that caused it.
const OriginHeader = "x-origin-id"

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, log); err != nil {
		log.Error("ledger-consumer failed", "error", err)
		os.Exit(1)
	}
	log.Info("ledger-consumer stopped")
}

type settings struct {
	pgURL, schema, amqpURL, queue, name string
	forward                             string
	ackDelay                            time.Duration
	workers                             int
	noTopology                          bool
}

func load() (settings, error) {
	s := settings{
		pgURL:   os.Getenv("FAULTS_POSTGRES_URL"),
		schema:  os.Getenv("FAULTS_SCHEMA"),
		amqpURL: os.Getenv("FAULTS_AMQP_URL"),
		queue:   os.Getenv("FAULTS_QUEUE"),
		name:    os.Getenv("FAULTS_NAME"),
		forward: os.Getenv("FAULTS_FORWARD_QUEUE"),
		workers: 4,

		noTopology: os.Getenv("FAULTS_NO_TOPOLOGY") != "",
	}
	if s.pgURL == "" || s.schema == "" || s.amqpURL == "" || s.queue == "" {
		return s, errors.New("FAULTS_POSTGRES_URL, FAULTS_SCHEMA, FAULTS_AMQP_URL and FAULTS_QUEUE are required")
	}
	if s.name == "" {
		s.name = "ledger-consumer"
	}
	if v := os.Getenv("FAULTS_ACK_DELAY"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return s, fmt.Errorf("FAULTS_ACK_DELAY: %w", err)
		}
		s.ackDelay = d
	}
	if v := os.Getenv("FAULTS_WORKERS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return s, fmt.Errorf("FAULTS_WORKERS %q is not a positive integer", v)
		}
		s.workers = n
	}
	return s, nil
}

func run(ctx context.Context, log *slog.Logger) error {
	s, err := load()
	if err != nil {
		return err
	}
	pcfg, err := pgxpool.ParseConfig(s.pgURL)
	if err != nil {
		return fmt.Errorf("parse FAULTS_POSTGRES_URL: %w", err)
	}
	pcfg.MaxConns = int32(s.workers + 4)
	pcfg.ConnConfig.RuntimeParams["application_name"] = s.name
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	defer pool.Close()

	in, err := inbox.New(pool, inbox.Config{
		Schema:  s.schema,
		Workers: s.workers,
		// Short intervals so that a lost LISTEN connection or a retry shows
		// within the suite's time budget.
		PollInterval: 200 * time.Millisecond,
		MaxAttempts:  3,
		RetryInitial: 50 * time.Millisecond,
		RetryMax:     200 * time.Millisecond,
		Logger:       log,
	})
	if err != nil {
		return err
	}
	var ob *inbox.Outbox
	if s.forward != "" {
		if ob, err = inbox.NewOutbox(pool, inbox.OutboxConfig{Schema: s.schema, Logger: log}); err != nil {
			return err
		}
	}
	effects := sqlident.Quote(s.schema) + ".effects"
	in.Handle(Topic, func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		switch {
		case strings.HasPrefix(m.ID, "fail-"):
			return inbox.Permanent(errors.New("ledger: this message is made to fail"))
		case strings.HasPrefix(m.ID, "panic-"):
			panic("ledger: this message is made to panic")
		case strings.HasPrefix(m.ID, "exit-"):
			os.Exit(ExitCode)
		}
		_, err := tx.Exec(ctx, `INSERT INTO `+effects+` (message_id, stream, seq) VALUES ($1, $2, $3)`,
			m.ID, m.Stream, m.Seq)
		if err != nil {
			return fmt.Errorf("insert effect of %s: %w", m.ID, err)
		}
		if ob != nil {
			_, err = ob.Enqueue(ctx, tx, inbox.OutgoingMessage{
				RoutingKey: s.forward,
				Type:       Topic,
				Stream:     m.Stream,
				Headers:    map[string]string{OriginHeader: m.ID},
				Body:       m.Body,
			})
			if err != nil {
				return fmt.Errorf("enqueue follow-up of %s: %w", m.ID, err)
			}
		}
		return nil
	})

	var store amqp.Store = in
	if s.ackDelay > 0 {
		store = delayedAck{next: in, delay: s.ackDelay, log: log}
	}
	var topology *amqp.Topology
	if !s.noTopology {
		topology = &amqp.Topology{}
	}
	rcv, err := amqp.NewReceiver(store, amqp.Config{
		URL:            s.amqpURL,
		Queue:          s.queue,
		ConnectionName: s.name,
		Prefetch:       200,
		BatchSize:      50,
		Topology:       topology,
		// Reconnect quickly: the suite closes connections on purpose.
		ReconnectInitial: 100 * time.Millisecond,
		ReconnectMax:     time.Second,
		Logger:           log,
	})
	if err != nil {
		return err
	}
	if err := in.Start(ctx); err != nil {
		return err
	}
	log.Info("ledger-consumer running", "queue", s.queue, "schema", s.schema, "ack_delay", s.ackDelay, "forward_to", s.forward)
	// Run returns once ctx is cancelled (SIGTERM), after storing and acking
	// the batches in flight and the batch in hand.
	runErr := rcv.Run(ctx)
	stopCtx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stopErr := in.Stop(stopCtx)
	return errors.Join(runErr, stopErr)
}

// delayedAck sleeps after a store has returned, that is after the batch is
// committed and before the receiver acks it: a process killed in that
// window leaves committed messages unacked, which the broker redelivers.
type delayedAck struct {
	next  amqp.Store
	delay time.Duration
	log   *slog.Logger
}

// AckWindowLog is logged when a committed batch waits to be acked: the suite
// kills the process when it sees it.
const AckWindowLog = "batch committed; ack delayed"

func (d delayedAck) Validate(msg inbox.Message) error { return d.next.Validate(msg) }

func (d delayedAck) Store(ctx context.Context, msgs ...inbox.Message) (inbox.StoreResult, error) {
	res, err := d.next.Store(ctx, msgs...)
	if err == nil {
		d.log.Info(AckWindowLog, "deliveries", len(msgs), "new", res.Stored, "duplicates", res.Duplicates, "delay", d.delay)
		time.Sleep(d.delay)
	}
	return res, err
}
