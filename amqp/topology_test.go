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
	topo := amqp.Topology{Queue: name, Exchange: name + "_x", RoutingKeys: []string{"order.*", "refund.#"}}

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

	// Quorum queues, the main one with the default delivery limit.
	queues := map[string]string{}
	for _, line := range strings.Split(rabbitmqctl(t, "list_queues", "name", "type", "arguments", "-s"), "\n") {
		if f := strings.SplitN(line, "\t", 2); len(f) == 2 {
			queues[f[0]] = f[1]
		}
	}
	if q := queues[name]; !strings.HasPrefix(q, "quorum\t") || !strings.Contains(q, `{"x-delivery-limit",20}`) {
		t.Errorf("queue %s: %q; want a quorum queue with x-delivery-limit 20", name, q)
	}
	if q := queues[name+amqp.DefaultDeadLetterQueueSuffix]; !strings.HasPrefix(q, "quorum\t") || strings.Contains(q, "x-delivery-limit") {
		t.Errorf("dead-letter queue: %q; want a quorum queue without a delivery limit", q)
	}

	// Different arguments on an existing queue are refused, not applied.
	topo.Classic = true
	if err := amqp.Declare(ctx, url, topo); err == nil || !strings.Contains(err.Error(), "PRECONDITION_FAILED") {
		t.Fatalf("redeclaring as classic: %v; want PRECONDITION_FAILED", err)
	}
	topo.Classic = false
	topo.DeliveryLimit = 5
	if err := amqp.Declare(ctx, url, topo); err == nil || !strings.Contains(err.Error(), "Topology.DeliveryLimit") {
		t.Fatalf("redeclaring with another delivery limit: %v; want an error that names Topology.DeliveryLimit", err)
	}
}

// TestDeclareOverAnExistingClassicQueue: queues that Topology declared
// before quorum became its default are classic. Declaring them with the
// defaults is refused with an error that says what to do, and Classic
// declares them as they are.
func TestDeclareOverAnExistingClassicQueue(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url := testenv.AMQPURL()
	name := testenv.UniqueName("inbox_topo")
	t.Cleanup(func() {
		deleteTopology(t, url, []string{name, name + amqp.DefaultDeadLetterQueueSuffix}, []string{name + amqp.DefaultDeadLetterExchangeSuffix})
	})
	// What Topology declared before: classic queues without a type argument.
	conn, err := amqp091.Dial(url)
	if err != nil {
		t.Fatalf("RabbitMQ at INBOX_AMQP_URL does not answer: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	dlx := name + amqp.DefaultDeadLetterExchangeSuffix
	if err := ch.ExchangeDeclare(dlx, amqp091.ExchangeDirect, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	for _, q := range []struct {
		name string
		args amqp091.Table
	}{
		{name + amqp.DefaultDeadLetterQueueSuffix, nil},
		{name, amqp091.Table{"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": name + amqp.DefaultDeadLetterQueueSuffix}},
	} {
		if _, err := ch.QueueDeclare(q.name, true, false, false, false, q.args); err != nil {
			t.Fatal(err)
		}
	}

	err = amqp.Declare(ctx, url, amqp.Topology{Queue: name})
	if err == nil || !strings.Contains(err.Error(), "PRECONDITION_FAILED") || !strings.Contains(err.Error(), "set Classic to keep a classic queue") {
		t.Fatalf("declaring quorum over classic: %v; want PRECONDITION_FAILED that names Topology.Classic", err)
	}
	if err := amqp.Declare(ctx, url, amqp.Topology{Queue: name, Classic: true}); err != nil {
		t.Fatalf("declaring with Classic over the classic queues: %v", err)
	}
}
