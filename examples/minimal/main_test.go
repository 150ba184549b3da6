package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/inboxkit/inbox/amqp"
	"github.com/inboxkit/inbox/internal/devenv"
)

// TestMinimalConsumer runs the consumer on a queue and schema of its own,
// sends it greetings (one twice) and stops it as Ctrl-C would.
func TestMinimalConsumer(t *testing.T) {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	s := settings{
		postgresURL: devenv.PostgresURL(),
		amqpURL:     devenv.AMQPURL(),
		schema:      "minimal_test_" + hex.EncodeToString(b),
		queue:       "minimal_test_" + hex.EncodeToString(b),
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := pgxpool.New(ctx, s.postgresURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	defer cleanup(t, pool, s)
	// Declared before publishing, as at deployment; the receiver declares
	// the same again.
	if err := amqp.Declare(ctx, s.amqpURL, amqp.Topology{Queue: s.queue}); err != nil {
		t.Fatal(err)
	}

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- run(runCtx, s) }()

	publish(t, s, "g-1", `{"name": "Ada"}`)
	publish(t, s, "g-1", `{"name": "Ada"}`) // a duplicate
	publish(t, s, "g-2", `{"name": "Grace"}`)
	publish(t, s, "g-3", `{"name": "Ada"}`)
	want := map[string]int{"Ada": 2, "Grace": 1}
	var got map[string]int
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		got = counts(ctx, pool, s.schema)
		if len(got) == len(want) && got["Ada"] == want["Ada"] && got["Grace"] == want["Grace"] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("greetings %v, want %v", got, want)
		}
	}
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v after Ctrl-C", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return after its context was cancelled")
	}
	// The duplicate was acked and dropped, not left in the queue.
	time.Sleep(100 * time.Millisecond)
	if got := counts(ctx, pool, s.schema); got["Ada"] != 2 {
		t.Fatalf("after stop: greetings %v, want %v", got, want)
	}
}

func counts(ctx context.Context, pool *pgxpool.Pool, schema string) map[string]int {
	rows, err := pool.Query(ctx, `SELECT name, count FROM `+pgx.Identifier{schema, "greetings"}.Sanitize())
	if err != nil {
		return nil // not created yet
	}
	out := map[string]int{}
	var name string
	var n int
	if _, err := pgx.ForEachRow(rows, []any{&name, &n}, func() error { out[name] = n; return nil }); err != nil {
		return nil
	}
	return out
}

func publish(t *testing.T, s settings, id, body string) {
	t.Helper()
	conn, err := amqp091.Dial(s.amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", s.queue, false, false, amqp091.Publishing{
		MessageId: id, Type: "greeting", Body: []byte(body),
	})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := dc.WaitContext(ctx); !ok || err != nil {
		t.Fatalf("publish %s: confirmed %v, %v", id, ok, err)
	}
}

func cleanup(t *testing.T, pool *pgxpool.Pool, s settings) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := pool.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{s.schema}.Sanitize()+` CASCADE`); err != nil {
		t.Errorf("drop schema: %v", err)
	}
	conn, err := amqp091.Dial(s.amqpURL)
	if err != nil {
		t.Errorf("delete queue: %v", err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Errorf("delete queue: %v", err)
		return
	}
	for _, q := range []string{s.queue, s.queue + amqp.DefaultDeadLetterQueueSuffix} {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			t.Errorf("delete queue %s: %v", q, err)
		}
	}
	if err := ch.ExchangeDelete(s.queue+amqp.DefaultDeadLetterExchangeSuffix, false, false); err != nil {
		t.Errorf("delete exchange: %v", err)
	}
}
