package inboxtest

import (
	"context"
	"fmt"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/amqp"
)

// publishTimeout bounds one Publish or PublishRaw call, confirms included.
const publishTimeout = 30 * time.Second

// NewQueue declares a queue with a unique name on the broker at url, with
// the dead-letter exchange and queue (the name plus ".dead") that
// amqp.Topology declares by default, so a receiver whose Config.Topology is
// set declares the same without conflict. Rejected deliveries end in the
// dead-letter queue. Everything is deleted when the test ends.
func NewQueue(t testing.TB, url string) string {
	t.Helper()
	topo := amqp.Topology{Queue: UniqueName("inboxtest")}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := amqp.Declare(ctx, url, topo); err != nil {
		t.Fatalf("inboxtest: %v", err)
	}
	t.Cleanup(func() {
		withChannel(t, url, func(ch *amqp091.Channel) error {
			for _, q := range []string{topo.Queue, topo.Queue + amqp.DefaultDeadLetterQueueSuffix} {
				if _, err := ch.QueueDelete(q, false, false, false); err != nil {
					return fmt.Errorf("delete queue %s: %w", q, err)
				}
			}
			dlx := topo.Queue + amqp.DefaultDeadLetterExchangeSuffix
			if err := ch.ExchangeDelete(dlx, false, false); err != nil {
				return fmt.Errorf("delete exchange %s: %w", dlx, err)
			}
			return nil
		})
	})
	return topo.Queue
}

// QueueLen returns the number of messages ready in queue (unacknowledged
// ones are not counted).
func QueueLen(t testing.TB, url, queue string) int {
	t.Helper()
	var n int
	withChannel(t, url, func(ch *amqp091.Channel) error {
		q, err := ch.QueueDeclarePassive(queue, false, false, false, false, nil)
		if err != nil {
			return fmt.Errorf("inspect queue %s: %w", queue, err)
		}
		n = q.Messages
		return nil
	})
	return n
}

// Publish sends msgs to queue through the default exchange, as the amqp
// package's receiver reads them with its default settings: ID as the
// message_id property, Topic as the type property, Stream and Seq in the
// headers amqp.DefaultStreamHeader and amqp.DefaultSequenceHeader, Headers as
// AMQP headers. Source is not sent: the receiver sets it. It returns once
// the broker has confirmed every message, and fails the test if one is
// refused or cannot be routed to a queue.
func Publish(t testing.TB, url, queue string, msgs ...inbox.Message) {
	t.Helper()
	pubs := make([]amqp091.Publishing, len(msgs))
	for i, m := range msgs {
		headers := amqp091.Table{}
		for k, v := range m.Headers {
			headers[k] = v
		}
		if m.Stream != "" {
			headers[amqp.DefaultStreamHeader] = m.Stream
			headers[amqp.DefaultSequenceHeader] = m.Seq
		}
		pubs[i] = amqp091.Publishing{
			MessageId:    m.ID,
			Type:         m.Topic,
			Headers:      headers,
			Body:         m.Body,
			DeliveryMode: amqp091.Persistent,
		}
	}
	PublishRaw(t, url, queue, pubs...)
}

// PublishRaw sends AMQP messages as they are to queue through the default
// exchange, for tests of what the receiver does with odd input (no
// message_id, a sequence header that is not a number). It waits for the
// broker's confirms like Publish.
func PublishRaw(t testing.TB, url, queue string, pubs ...amqp091.Publishing) {
	t.Helper()
	withChannel(t, url, func(ch *amqp091.Channel) error {
		if err := ch.Confirm(false); err != nil {
			return fmt.Errorf("enable publisher confirms: %w", err)
		}
		// Mandatory publishing returns what no queue takes (a misspelt
		// queue name) instead of dropping it silently.
		returns := ch.NotifyReturn(make(chan amqp091.Return, len(pubs)))
		ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
		defer cancel()
		confirms := make([]*amqp091.DeferredConfirmation, len(pubs))
		for i, p := range pubs {
			dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, p)
			if err != nil {
				return fmt.Errorf("publish message %d of %d to %s: %w", i+1, len(pubs), queue, err)
			}
			confirms[i] = dc
		}
		for i, dc := range confirms {
			acked, err := dc.WaitContext(ctx)
			if err != nil {
				return fmt.Errorf("wait for the confirm of message %d: %w", i+1, err)
			}
			if !acked {
				return fmt.Errorf("broker refused message %d (id %q)", i+1, pubs[i].MessageId)
			}
		}
		// A returned message arrives before its confirm, so every return
		// is in the channel by now.
		select {
		case r := <-returns:
			return fmt.Errorf("message %q was not routed to queue %q: %d %s", r.MessageId, queue, r.ReplyCode, r.ReplyText)
		default:
		}
		return nil
	})
}

// withChannel runs fn on a fresh connection and channel to url, closed
// afterwards, and fails the test on error.
func withChannel(t testing.TB, url string, fn func(*amqp091.Channel) error) {
	t.Helper()
	conn, err := amqp091.DialConfig(url, amqp091.Config{
		Dial:       amqp091.DefaultDial(10 * time.Second),
		Properties: amqp091.Table{"connection_name": "inboxtest"},
	})
	if err != nil {
		t.Fatalf("inboxtest: connect to RabbitMQ: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("inboxtest: open channel: %v", err)
	}
	defer ch.Close()
	if err := fn(ch); err != nil {
		t.Fatalf("inboxtest: %v", err)
	}
}

// StartReceiver runs an amqp.Receiver that stores into in, until the test
// ends; then it stops it and waits for it (before an inbox started earlier
// with Start is stopped). cfg needs URL and Queue; the Receiver is returned
// for its Stats.
func StartReceiver(t testing.TB, in amqp.Store, cfg amqp.Config) *amqp.Receiver {
	t.Helper()
	rcv, err := amqp.NewReceiver(in, cfg)
	if err != nil {
		t.Fatalf("inboxtest: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rcv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("inboxtest: receiver: %v", err)
		}
	})
	return rcv
}
