package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"
)

// TestOutboxExample runs the example on a schema and queues of its own.
func TestOutboxExample(t *testing.T) {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	suffix := hex.EncodeToString(b)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := run(ctx, settings{
		postgresURL: envOr("INBOX_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"),
		amqpURL:     envOr("INBOX_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
		schema:      "outbox_example_test_" + suffix,
		payments:    "outbox_example_test_payments_" + suffix,
		shipments:   "outbox_example_test_shipments_" + suffix,
		orders:      10,
	})
	if err != nil {
		t.Fatal(err)
	}
}
