// Command minimal is the smallest useful inbox consumer, to copy as the
// start of a service: it consumes "greeting" messages from the RabbitMQ
// queue "greetings", and counts greetings per name in its own table,
// exactly once per message, until Ctrl-C.
//
//	go run ./examples/minimal
//
// and, from another shell (sending the same -id twice counts once):
//
//	go run ./examples/send -queue greetings -topic greeting -id hello-1 -body '{"name": "Ada"}'
//
// It uses INBOX_POSTGRES_URL and INBOX_AMQP_URL when set, else the local
// defaults. It declares the queue (with a dead-letter queue,
// greetings.dead) and creates its tables in the schema "inbox_minimal"; a
// real service creates them at deploy time (inboxctl migrate up).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/amqp"
	"github.com/inboxkit/inbox/internal/devenv"
	"github.com/inboxkit/inbox/migrations"
)

func main() {
	// Ctrl-C or SIGTERM cancels ctx: the receiver acks what it has stored
	// and stops, then the workers finish the messages in hand.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, settings{
		postgresURL: devenv.PostgresURL(),
		amqpURL:     devenv.AMQPURL(),
		schema:      "inbox_minimal",
		queue:       "greetings",
	})
	if err != nil {
		slog.Error("consumer failed", "error", err)
		os.Exit(1)
	}
}

type settings struct {
	postgresURL, amqpURL string
	schema, queue        string
}

// Greeting is the body of a "greeting" message.
type Greeting struct {
	Name string `json:"name"`
}

func run(ctx context.Context, s settings) error {
	pcfg, err := pgxpool.ParseConfig(s.postgresURL)
	if err != nil {
		return fmt.Errorf("parse PostgreSQL URL: %w", err)
	}
	pcfg.MaxConns = 10 // the inbox's 4 workers, the receiver's 4 batches in flight, maintenance, and one to spare
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	defer pool.Close()

	// The inbox tables, and the service's own.
	if _, err := migrations.Up(ctx, pool, s.schema); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	greetings := pgx.Identifier{s.schema, "greetings"}.Sanitize()
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+greetings+` (name text PRIMARY KEY, count int NOT NULL)`); err != nil {
		return fmt.Errorf("create table: %w", err)
	}

	in, err := inbox.New(pool, inbox.Config{Schema: s.schema})
	if err != nil {
		return err
	}
	in.Handle("greeting", inbox.JSON(func(ctx context.Context, tx pgx.Tx, msg *inbox.Message, g Greeting) error {
		// Written through tx: committed together with the message's
		// done-mark, so a redelivered copy never counts twice.
		var count int
		err := tx.QueryRow(ctx, `INSERT INTO `+greetings+` AS g (name, count) VALUES ($1, 1)
			ON CONFLICT (name) DO UPDATE SET count = g.count + 1 RETURNING count`, g.Name).Scan(&count)
		if err != nil {
			return err // rolled back; retried with backoff
		}
		slog.Info("greeted", "name", g.Name, "times", count, "message_id", msg.ID)
		return nil
	}))
	if err := in.Start(ctx); err != nil {
		return err
	}
	defer in.Stop(context.Background()) // waits for the handlers in flight

	rcv, err := amqp.NewReceiver(in, amqp.Config{
		URL:      s.amqpURL,
		Queue:    s.queue,
		Topology: &amqp.Topology{}, // declare the queue and its dead-letter queue
		// The dedup key: a publisher that cannot set the message_id
		// property may send the ID in a header instead.
		MessageID: func(d *amqp091.Delivery) string {
			if id, ok := d.Headers["x-message-id"].(string); ok && id != "" {
				return id
			}
			return d.MessageId
		},
		// The topic (which selects the handler): the AMQP type property, or
		// the routing key when type is empty. This is the default; use
		// amqp.TopicFromType to reject messages without a type.
		TopicFrom: amqp.TopicFromTypeOrRoutingKey,
	})
	if err != nil {
		return err
	}
	slog.Info("consuming; Ctrl-C to stop", "queue", s.queue, "schema", s.schema)
	return rcv.Run(ctx) // returns nil once ctx is cancelled
}
