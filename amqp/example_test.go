package amqp_test

import (
	"context"
	"log"
	"os"
	"os/signal"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/amqp"
	"github.com/inboxkit/inbox/migrations"
)

// A consumer service: the receiver stores deliveries from the "orders" queue
// in the inbox, and the inbox's workers run the handler once per message.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	if _, err := migrations.Up(ctx, pool, "inbox"); err != nil {
		log.Fatal(err)
	}
	in, err := inbox.New(pool, inbox.Config{Schema: "inbox"})
	if err != nil {
		log.Fatal(err)
	}
	in.Handle("order.created", func(ctx context.Context, tx pgx.Tx, msg *inbox.Message) error {
		// Writes through tx commit together with the message's done-mark.
		_, err := tx.Exec(ctx, "INSERT INTO orders (id, payload) VALUES ($1, $2)", msg.ID, msg.Body)
		return err
	})
	if err := in.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer in.Stop(context.Background())

	rcv, err := amqp.NewReceiver(in, amqp.Config{
		URL:   os.Getenv("AMQP_URL"),
		Queue: "orders",
		// Declared on every (re)connect: a durable queue bound to the shop
		// exchange, dead-lettering bad input into orders.dead.
		Topology: &amqp.Topology{Exchange: "shop", RoutingKeys: []string{"order.*"}},
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := rcv.Run(ctx); err != nil {
		log.Fatal(err)
	}
}
