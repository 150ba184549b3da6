// Command send publishes one message to a RabbitMQ queue, the way the amqp
// receiver reads it by default, and waits for the broker's confirm. It is
// for trying the examples by hand:
//
//	go run ./examples/send -queue greetings -topic greeting -id hello-1 -body '{"name": "Ada"}'
//
// Sending the same -id twice shows deduplication; -stream and -seq send an
// ordered message. It uses INBOX_AMQP_URL when set, else the local default.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/inboxkit/inbox/amqp"
	"github.com/inboxkit/inbox/internal/devenv"
)

func main() {
	url := devenv.AMQPURL()
	queue := flag.String("queue", "", "queue to publish to (required)")
	topic := flag.String("topic", "", "topic: the AMQP type property (required)")
	id := flag.String("id", "", "message ID: the AMQP message_id property (required)")
	body := flag.String("body", "", "message body")
	stream := flag.String("stream", "", "stream key, for an ordered message")
	seq := flag.Int64("seq", 0, "sequence number within -stream")
	flag.Parse()
	if *queue == "" || *topic == "" || *id == "" {
		fmt.Fprintln(os.Stderr, "send: -queue, -topic and -id are required")
		flag.Usage()
		os.Exit(2)
	}
	msg := amqp091.Publishing{
		MessageId:    *id,
		Type:         *topic,
		Body:         []byte(*body),
		DeliveryMode: amqp091.Persistent,
		Headers:      amqp091.Table{},
	}
	if *stream != "" {
		msg.Headers[amqp.DefaultStreamHeader] = *stream
		msg.Headers[amqp.DefaultSequenceHeader] = *seq
	}
	if err := send(url, *queue, msg); err != nil {
		fmt.Fprintln(os.Stderr, "send:", err)
		os.Exit(1)
	}
	fmt.Printf("sent %s (%s) to %s\n", *id, *topic, *queue)
}

func send(url, queue string, msg amqp091.Publishing) error {
	conn, err := amqp091.DialConfig(url, amqp091.Config{Dial: amqp091.DefaultDial(10 * time.Second)})
	if err != nil {
		return fmt.Errorf("connect to RabbitMQ: %w", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		return fmt.Errorf("enable publisher confirms: %w", err)
	}
	returns := ch.NotifyReturn(make(chan amqp091.Return, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Mandatory, so a queue that does not exist is an error, not a
	// message silently dropped.
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, msg)
	if err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	ok, err := dc.WaitContext(ctx)
	if err != nil {
		return fmt.Errorf("wait for confirm: %w", err)
	}
	if !ok {
		return fmt.Errorf("the broker refused the message")
	}
	select {
	case r := <-returns:
		return fmt.Errorf("no queue %q took the message: %s (is the consumer running? it declares the queue)", queue, r.ReplyText)
	default:
	}
	return nil
}
