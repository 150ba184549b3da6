package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"github.com/inboxkit/inbox/internal/devenv"
)

// TestOutboxExample runs the example on a schema and queues of its own.
func TestOutboxExample(t *testing.T) {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	suffix := hex.EncodeToString(b)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := run(ctx, settings{
		postgresURL: devenv.PostgresURL(),
		amqpURL:     devenv.AMQPURL(),
		schema:      "outbox_example_test_" + suffix,
		payments:    "outbox_example_test_payments_" + suffix,
		shipments:   "outbox_example_test_shipments_" + suffix,
		orders:      10,
	})
	if err != nil {
		t.Fatal(err)
	}
}
