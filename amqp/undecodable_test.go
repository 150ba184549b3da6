package amqp_test

import (
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/inboxkit/inbox"
)

// nestedTable returns a table holding levels tables nested one in another.
func nestedTable(levels int) amqp091.Table {
	t := amqp091.Table{"leaf": "x"}
	for i := 1; i < levels; i++ {
		t = amqp091.Table{"n": t}
	}
	return t
}

// TestUndecodableDeliveryIsDeadLettered: RabbitMQ accepts header tables
// nested deeper than amqp091-go reads (32 levels), and amqp091-go writes
// them, so a publisher can send one. Each delivery of it kills the
// receiver's connection before anything is acked. On a queue declared by
// Topology with its defaults, the broker's delivery limit dead-letters it,
// and the message behind it is stored and handled.
func TestUndecodableDeliveryIsDeadLettered(t *testing.T) {
	e := setup(t) // the queue is declared by Topology with its defaults
	in := e.newInbox(inbox.Config{})
	e.publish(
		amqp091.Publishing{MessageId: "poison", Headers: amqp091.Table{"h": nestedTable(33)}},
		amqp091.Publishing{MessageId: "good", Headers: amqp091.Table{"h": nestedTable(31)}},
	)
	r := e.run(in, e.receiverConfig())

	e.assertOnceEach(1)
	e.waitFor("the undecodable message in the dead-letter queue", 60*time.Second, func() bool { return e.queueDepth(e.dlq) == 1 })
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	e.waitFor("the queue drained", 10*time.Second, func() bool { return e.queueDepth(e.queue) == 0 })
	var id string
	if err := e.pool.QueryRow(e.ctx, `SELECT message_id FROM `+e.q+`.inbox_messages`).Scan(&id); err != nil || id != "good" {
		t.Fatalf("stored %q, %v; want only the good message", id, err)
	}

	logs := e.logs.String()
	if strings.Contains(logs, "queue deleted?") {
		t.Error("a connection killed by an undecodable frame was logged as a cancelled consumer (queue deleted?)")
	}
	var found bool
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, "level=ERROR") && strings.Contains(line, "queue="+e.queue) &&
			strings.Contains(line, "cannot be decoded") && strings.Contains(line, "x-delivery-limit") {
			found = true
			break
		}
	}
	if !found {
		t.Error("no ERROR log naming the queue, the undecodable delivery and the remedy (a delivery limit)")
	}
}
