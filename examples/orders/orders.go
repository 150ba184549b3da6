package main

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/inboxkit/inbox"
)

// The service's topics. Each event of an order carries the order ID as its
// stream and its position in the order's life as its sequence number:
// created is 1, paid 2, shipped 3.
const (
	TopicCreated = "order.created"
	TopicPaid    = "order.paid"
	TopicShipped = "order.shipped"
)

// topics lists the topics in sequence order: topics[seq-1].
var topics = []string{TopicCreated, TopicPaid, TopicShipped}

// OrderCreated is the body of an order.created message.
type OrderCreated struct {
	OrderID     string `json:"order_id"`
	Customer    string `json:"customer"`
	AmountCents int64  `json:"amount_cents"`
}

// OrderPaid is the body of an order.paid message.
type OrderPaid struct {
	OrderID     string `json:"order_id"`
	AmountCents int64  `json:"amount_cents"`
}

// OrderShipped is the body of an order.shipped message.
type OrderShipped struct {
	OrderID  string `json:"order_id"`
	Tracking string `json:"tracking"`
}

// store is the service's own state: one row per order, in the same
// database as the inbox, written only through the handlers' transactions.
type store struct {
	orders string // quoted table name

	// runs counts handler runs, committed or not, for the summary.
	runs atomic.Int64
}

func newStore(schema string) *store {
	return &store{orders: pgx.Identifier{schema, "orders"}.Sanitize()}
}

// createTable creates the orders table. history lists the events in the
// order they were applied, which is what the example checks.
func (s *store) createTable(ctx context.Context, db interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}) error {
	_, err := db.Exec(ctx, `CREATE TABLE `+s.orders+` (
		order_id     text        PRIMARY KEY,
		customer     text        NOT NULL,
		amount_cents bigint      NOT NULL,
		status       text        NOT NULL,
		paid_cents   bigint,
		tracking     text,
		history      text[]      NOT NULL,
		updated_at   timestamptz NOT NULL DEFAULT now())`)
	if err != nil {
		return fmt.Errorf("create orders table: %w", err)
	}
	return nil
}

// register adds the three handlers to in.
func (s *store) register(in *inbox.Inbox) {
	in.Handle(TopicCreated, inbox.JSON(s.created))
	in.Handle(TopicPaid, inbox.JSON(s.paid))
	in.Handle(TopicShipped, inbox.JSON(s.shipped))
}

func (s *store) created(ctx context.Context, tx pgx.Tx, msg *inbox.Message, e OrderCreated) error {
	s.runs.Add(1)
	tag, err := tx.Exec(ctx, `INSERT INTO `+s.orders+` (order_id, customer, amount_cents, status, history)
		VALUES ($1, $2, $3, 'created', ARRAY['created'])
		ON CONFLICT (order_id) DO NOTHING`, e.OrderID, e.Customer, e.AmountCents)
	if err != nil {
		return fmt.Errorf("insert order %s: %w", e.OrderID, err)
	}
	if tag.RowsAffected() == 0 {
		// The inbox never lets a duplicate through; this would be a bug
		// (or two messages with different IDs for one event).
		return inbox.Permanent(fmt.Errorf("order %s already exists", e.OrderID))
	}
	return nil
}

func (s *store) paid(ctx context.Context, tx pgx.Tx, msg *inbox.Message, e OrderPaid) error {
	s.runs.Add(1)
	return s.advance(ctx, tx, e.OrderID, "created", "paid", `paid_cents = $3`, e.AmountCents)
}

func (s *store) shipped(ctx context.Context, tx pgx.Tx, msg *inbox.Message, e OrderShipped) error {
	s.runs.Add(1)
	return s.advance(ctx, tx, e.OrderID, "paid", "shipped", `tracking = $3`, e.Tracking)
}

// errWrongState says an event came for an order not in the state it
// follows. The inbox's ordering makes it impossible; if it happened anyway,
// the message would go dead and the example's checks would fail.
var errWrongState = errors.New("order is not in the state this event follows")

// advance moves an order from one status to the next, with one more column
// set from arg.
func (s *store) advance(ctx context.Context, tx pgx.Tx, orderID, from, to, set string, arg any) error {
	tag, err := tx.Exec(ctx, `UPDATE `+s.orders+`
		SET status = $2::text, history = history || $2::text, updated_at = now(), `+set+`
		WHERE order_id = $1 AND status = $4`, orderID, to, arg, from)
	if err != nil {
		return fmt.Errorf("mark order %s %s: %w", orderID, to, err)
	}
	if tag.RowsAffected() == 0 {
		return inbox.Permanent(fmt.Errorf("%s for order %s: %w (want %s)", to, orderID, errWrongState, from))
	}
	return nil
}

// order is one row of the orders table.
type order struct {
	ID          string
	Customer    string
	AmountCents int64
	Status      string
	PaidCents   *int64
	Tracking    *string
	History     []string
}

func (s *store) list(ctx context.Context, db interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}) ([]order, error) {
	rows, err := db.Query(ctx, `SELECT order_id, customer, amount_cents, status, paid_cents, tracking, history
		FROM `+s.orders+` ORDER BY order_id`)
	if err != nil {
		return nil, fmt.Errorf("list orders: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (order, error) {
		var o order
		err := row.Scan(&o.ID, &o.Customer, &o.AmountCents, &o.Status, &o.PaidCents, &o.Tracking, &o.History)
		return o, err
	})
	if err != nil {
		return nil, fmt.Errorf("list orders: %w", err)
	}
	return out, nil
}
