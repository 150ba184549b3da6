package main

import (
	"context"
	"fmt"
	"io"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/amqp"
)

// broker is the example's own connection to RabbitMQ, for what a real
// deployment does elsewhere: declaring the queue, and publishing (the
// upstream service's job).
type broker struct {
	conn *amqp091.Connection
}

func dialBroker(url string) (*broker, error) {
	conn, err := amqp091.DialConfig(url, amqp091.Config{
		Dial:       amqp091.DefaultDial(10 * time.Second),
		Properties: amqp091.Table{"connection_name": "orders-example-publisher"},
	})
	if err != nil {
		return nil, fmt.Errorf("connect to RabbitMQ at %s: %w (is it running? set INBOX_AMQP_URL)", redact(url), err)
	}
	return &broker{conn: conn}, nil
}

func (b *broker) close() { _ = b.conn.Close() }

// remove deletes the example's queue, its dead-letter queue and exchange.
func (b *broker) remove(name string, out io.Writer) {
	err := b.withChannel(func(ch *amqp091.Channel) error {
		for _, q := range []string{name, name + amqp.DefaultDeadLetterQueueSuffix} {
			if _, err := ch.QueueDelete(q, false, false, false); err != nil {
				return fmt.Errorf("delete queue %s: %w", q, err)
			}
		}
		if err := ch.ExchangeDelete(name+amqp.DefaultDeadLetterExchangeSuffix, false, false); err != nil {
			return fmt.Errorf("delete exchange %s: %w", name+amqp.DefaultDeadLetterExchangeSuffix, err)
		}
		return nil
	})
	if err != nil {
		fmt.Fprintf(out, "warning: %v\n", err)
	}
}

// queueLen is the number of messages waiting in a queue, acknowledged ones
// excluded.
func (b *broker) queueLen(name string) (int, error) {
	var n int
	err := b.withChannel(func(ch *amqp091.Channel) error {
		q, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
		if err != nil {
			return fmt.Errorf("inspect queue %s: %w", name, err)
		}
		n = q.Messages
		return nil
	})
	return n, err
}

// publish sends the deliveries to the queue through the default exchange
// and waits until the broker has confirmed each: after that the broker
// owns them, and the inbox's guarantees take over.
func (b *broker) publish(ctx context.Context, queue string, ds []delivery) error {
	return b.withChannel(func(ch *amqp091.Channel) error {
		if err := ch.Confirm(false); err != nil {
			return fmt.Errorf("enable publisher confirms: %w", err)
		}
		confirms := make([]*amqp091.DeferredConfirmation, len(ds))
		for i, d := range ds {
			dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, false, false, publishing(d))
			if err != nil {
				return fmt.Errorf("publish %s: %w", d.msg.ID, err)
			}
			confirms[i] = dc
		}
		for i, dc := range confirms {
			ok, err := dc.WaitContext(ctx)
			if err != nil {
				return fmt.Errorf("wait for the broker to confirm %s: %w", ds[i].msg.ID, err)
			}
			if !ok {
				return fmt.Errorf("broker refused %s", ds[i].msg.ID)
			}
		}
		return nil
	})
}

// publishBad sends an event without a message ID: the receiver cannot
// deduplicate it, so it rejects it to the dead-letter queue.
func (b *broker) publishBad(ctx context.Context, queue string) error {
	return b.publish(ctx, queue, []delivery{{msg: inbox.Message{Topic: TopicCreated, Body: []byte(`{"order_id": "order-99"}`)}}})
}

func (b *broker) withChannel(fn func(*amqp091.Channel) error) error {
	ch, err := b.conn.Channel()
	if err != nil {
		return fmt.Errorf("open AMQP channel: %w", err)
	}
	defer ch.Close()
	return fn(ch)
}
