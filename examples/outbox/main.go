// Command outbox shows consume → apply → emit, exactly once in effect and in
// order: a payments handler applies "order.paid" and, in the same
// transaction, emits "shipment.requested" through the outbox; the relay
// publishes it after commit, with publisher confirms; a second receiver
// consumes it and the shipping handler applies it, in order per order.
//
//	go run ./examples/outbox
//
// It uses INBOX_POSTGRES_URL and INBOX_AMQP_URL when set, else the local
// defaults; creates a schema and two queues of its own, and removes them at
// the end. It exits with status 0 only if every order was shipped once.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/amqp"
	"github.com/inboxkit/inbox/internal/devenv"
	"github.com/inboxkit/inbox/migrations"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	suffix := hex.EncodeToString(b)
	err := run(ctx, settings{
		postgresURL: devenv.PostgresURL(),
		amqpURL:     devenv.AMQPURL(),
		schema:      "outbox_example_" + suffix,
		payments:    "outbox_example_payments_" + suffix,
		shipments:   "outbox_example_shipments_" + suffix,
		orders:      20,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		os.Exit(1)
	}
	fmt.Println("PASS")
}

type settings struct {
	postgresURL, amqpURL        string
	schema, payments, shipments string
	orders                      int
}

// OrderPaid is the body of "order.paid" and of "shipment.requested".
type OrderPaid struct {
	Order  string `json:"order"`
	Amount int    `json:"amount"`
}

func run(ctx context.Context, s settings) error {
	pool, err := pgxpool.New(ctx, s.postgresURL)
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	defer pool.Close()
	defer cleanup(pool, s)
	if _, err := migrations.Up(ctx, pool, s.schema); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	payments := pgx.Identifier{s.schema, "payments"}.Sanitize()
	shipments := pgx.Identifier{s.schema, "shipments"}.Sanitize()
	if _, err := pool.Exec(ctx, `CREATE TABLE `+payments+` (order_id text PRIMARY KEY, amount int NOT NULL);
		CREATE TABLE `+shipments+` (order_id text PRIMARY KEY, requested_by text NOT NULL)`); err != nil {
		return fmt.Errorf("create tables: %w", err)
	}
	for _, q := range []string{s.payments, s.shipments} {
		if err := amqp.Declare(ctx, s.amqpURL, amqp.Topology{Queue: q}); err != nil {
			return err
		}
	}
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	ob, err := inbox.NewOutbox(pool, inbox.OutboxConfig{
		Schema:       s.schema,
		Destinations: map[string]inbox.Route{"shipments": {RoutingKey: s.shipments}},
		Logger:       quiet,
	})
	if err != nil {
		return err
	}
	in, err := inbox.New(pool, inbox.Config{Schema: s.schema, Logger: quiet})
	if err != nil {
		return err
	}
	// Apply the payment and emit the shipment request in one transaction:
	// both happen, or neither. A retried handler emits the same message ID.
	in.Handle("order.paid", inbox.JSON(func(ctx context.Context, tx pgx.Tx, m *inbox.Message, p OrderPaid) error {
		if _, err := tx.Exec(ctx, `INSERT INTO `+payments+` (order_id, amount) VALUES ($1, $2)`, p.Order, p.Amount); err != nil {
			return err
		}
		_, err := ob.Enqueue(ctx, tx, inbox.OutgoingMessage{
			Destination: "shipments",
			Type:        "shipment.requested",
			Stream:      p.Order,
			Body:        m.Body,
		})
		return err
	}))
	// The downstream consumer: another service in real life.
	in.Handle("shipment.requested", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		var p OrderPaid
		if err := json.Unmarshal(m.Body, &p); err != nil {
			return inbox.Permanent(err)
		}
		_, err := tx.Exec(ctx, `INSERT INTO `+shipments+` (order_id, requested_by) VALUES ($1, $2)`, p.Order, m.ID)
		return err
	})
	if err := in.Start(ctx); err != nil {
		return err
	}
	defer func() { _ = in.Stop(context.Background()) }()

	relay, err := amqp.NewRelay(ob, amqp.RelayConfig{URL: s.amqpURL, Logger: quiet})
	if err != nil {
		return err
	}
	runCtx, stopAll := context.WithCancel(ctx)
	done := make(chan error, 3)
	go func() { done <- relay.Run(runCtx) }()
	for _, q := range []string{s.payments, s.shipments} {
		rcv, err := amqp.NewReceiver(in, amqp.Config{URL: s.amqpURL, Queue: q, Logger: quiet})
		if err != nil {
			stopAll()
			return err
		}
		go func() { done <- rcv.Run(runCtx) }()
	}
	defer func() {
		stopAll()
		for range 3 {
			<-done
		}
	}()

	if err := publish(ctx, s); err != nil {
		return err
	}
	fmt.Printf("published %d order.paid messages (each twice) to %s\n", s.orders, s.payments)
	for {
		var paid, shipped int
		err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM `+payments+`), (SELECT count(*) FROM `+shipments+`)`).Scan(&paid, &shipped)
		if err != nil {
			return err
		}
		if shipped == s.orders {
			st, err := ob.Stats(ctx)
			if err != nil {
				return err
			}
			fmt.Printf("applied %d payments, emitted and applied %d shipment requests; outbox: %d pending, %d dead\n",
				paid, shipped, st.Pending, st.Dead)
			if paid != s.orders || st.Dead != 0 {
				return errors.New("some payment was not applied exactly once, or a shipment request is dead")
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("only %d of %d orders shipped: %w", shipped, s.orders, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// publish sends every order.paid twice, as a publisher retrying after a
// lost confirm would.
func publish(ctx context.Context, s settings) error {
	conn, err := amqp091.Dial(s.amqpURL)
	if err != nil {
		return fmt.Errorf("connect to RabbitMQ: %w", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	for copy := 0; copy < 2; copy++ {
		for i := 1; i <= s.orders; i++ {
			body, _ := json.Marshal(OrderPaid{Order: fmt.Sprintf("order-%02d", i), Amount: 10 * i})
			err := ch.PublishWithContext(ctx, "", s.payments, false, false, amqp091.Publishing{
				MessageId: fmt.Sprintf("paid-%02d", i), Type: "order.paid", Body: body, DeliveryMode: amqp091.Persistent,
			})
			if err != nil {
				return fmt.Errorf("publish: %w", err)
			}
		}
	}
	return nil
}

func cleanup(pool *pgxpool.Pool, s settings) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _ = pool.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{s.schema}.Sanitize()+` CASCADE`)
	conn, err := amqp091.Dial(s.amqpURL)
	if err != nil {
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return
	}
	for _, q := range []string{s.payments, s.shipments} {
		_, _ = ch.QueueDelete(q, false, false, false)
		_, _ = ch.QueueDelete(q+amqp.DefaultDeadLetterQueueSuffix, false, false, false)
		_ = ch.ExchangeDelete(q+amqp.DefaultDeadLetterExchangeSuffix, false, false)
	}
}
