// Command ledger-relay is the relay process of the fault-injection suite's
// chained cases (package faults): an amqp.Relay that publishes the outbox
// of a schema, which cmd/ledger-consumer fills with FAULTS_FORWARD_QUEUE
// set. It runs apart from that consumer so that the suite can SIGKILL the
// relay alone, and find and kill its connections by name.
//
// It is configured by the environment only:
//
//	FAULTS_POSTGRES_URL  PostgreSQL URL (required)
//	FAULTS_SCHEMA        migrated schema holding the outbox (required)
//	FAULTS_AMQP_URL      broker URL (required)
//	FAULTS_NAME          AMQP connection_name and PostgreSQL application_name
//	                     (default ledger-relay)
//
// SIGTERM or SIGINT stops it gracefully: the relay records the batch in
// hand, then closes its connection.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/amqp"
)

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, log); err != nil {
		log.Error("ledger-relay failed", "error", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, log *slog.Logger) error {
	pgURL, schema, amqpURL, name := os.Getenv("FAULTS_POSTGRES_URL"), os.Getenv("FAULTS_SCHEMA"), os.Getenv("FAULTS_AMQP_URL"), os.Getenv("FAULTS_NAME")
	if pgURL == "" || schema == "" || amqpURL == "" {
		return errors.New("FAULTS_POSTGRES_URL, FAULTS_SCHEMA and FAULTS_AMQP_URL are required")
	}
	if name == "" {
		name = "ledger-relay"
	}
	pcfg, err := pgxpool.ParseConfig(pgURL)
	if err != nil {
		return fmt.Errorf("parse FAULTS_POSTGRES_URL: %w", err)
	}
	pcfg.MaxConns = 4
	pcfg.ConnConfig.RuntimeParams["application_name"] = name
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	defer pool.Close()

	ob, err := inbox.NewOutbox(pool, inbox.OutboxConfig{
		Schema: schema,
		// Short backoff, so that a refused publish is retried within the
		// suite's time budget.
		RetryInitial: 50 * time.Millisecond,
		RetryMax:     200 * time.Millisecond,
		Logger:       log,
	})
	if err != nil {
		return err
	}
	relay, err := amqp.NewRelay(ob, amqp.RelayConfig{
		URL:            amqpURL,
		ConnectionName: name,
		PollInterval:   200 * time.Millisecond,
		// Reconnect quickly: the suite closes connections on purpose.
		ReconnectInitial: 100 * time.Millisecond,
		ReconnectMax:     time.Second,
		Logger:           log,
	})
	if err != nil {
		return err
	}
	log.Info("ledger-relay running", "schema", schema)
	if err := relay.Run(ctx); err != nil {
		return err
	}
	st := relay.Stats()
	log.Info("ledger-relay stopped", "published", st.Published, "confirmed", st.Confirmed,
		"republished", st.Republished, "reconnects", st.Reconnects)
	return nil
}
