package amqp_test

import (
	"context"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/inboxkit/inbox/amqp"
	"github.com/inboxkit/inbox/internal/testenv"
)

func TestDeclareQuorumQueueWithExchange(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url := testenv.AMQPURL()
	name := testenv.UniqueName("inbox_topo")
	topo := amqp.Topology{Queue: name, Quorum: true, Exchange: name + "_x", RoutingKeys: []string{"order.*", "refund.#"}}

	conn, err := amqp091.Dial(url)
	if err != nil {
		t.Fatalf("RabbitMQ at INBOX_AMQP_URL does not answer: %v", err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		deleteTopology(t, url, []string{name, name + amqp.DefaultDeadLetterQueueSuffix},
			[]string{name + "_x", name + amqp.DefaultDeadLetterExchangeSuffix})
	})

	for i := 0; i < 2; i++ { // declaring is idempotent
		if err := amqp.Declare(ctx, url, topo); err != nil {
			t.Fatalf("declare %d: %v", i, err)
		}
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"order.created", "refund.issued.eu", "other.thing"} {
		c, err := ch.PublishWithDeferredConfirmWithContext(ctx, name+"_x", key, false, false, amqp091.Publishing{MessageId: key})
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := c.WaitContext(ctx); !ok || err != nil {
			t.Fatalf("publish %s not confirmed: %v", key, err)
		}
	}
	q, err := inspect(url, name)
	if err != nil {
		t.Fatal(err)
	}
	if q.Messages != 2 {
		t.Fatalf("queue holds %d messages; want the 2 whose routing keys are bound", q.Messages)
	}

	// A rejected message goes to the dead-letter queue.
	d, ok, err := ch.Get(name, false)
	if err != nil || !ok {
		t.Fatalf("get: %v %v", ok, err)
	}
	if err := d.Reject(false); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		dq, err := inspect(url, name+amqp.DefaultDeadLetterQueueSuffix)
		if err != nil {
			t.Fatal(err)
		}
		if dq.Messages == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dead-letter queue holds %d messages, want 1", dq.Messages)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Different arguments on an existing queue are refused, not applied.
	topo.Quorum = false
	if err := amqp.Declare(ctx, url, topo); err == nil || !strings.Contains(err.Error(), "PRECONDITION_FAILED") {
		t.Fatalf("redeclaring as classic: %v; want PRECONDITION_FAILED", err)
	}
}
