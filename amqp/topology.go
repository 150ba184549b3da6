package amqp

import (
	"context"
	"errors"
	"fmt"
	"strings"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Defaults of Topology fields left zero.
const (
	DefaultExchangeType = amqp091.ExchangeTopic
	// DefaultRoutingKey binds everything published to a topic exchange.
	DefaultRoutingKey = "#"
	// DefaultDeadLetterExchangeSuffix and DefaultDeadLetterQueueSuffix name
	// the dead-letter exchange and queue after the queue.
	DefaultDeadLetterExchangeSuffix = ".dlx"
	DefaultDeadLetterQueueSuffix    = ".dead"
	// DefaultDeliveryLimit is the quorum queue's x-delivery-limit: a message
	// delivered and returned unacked this many times is dead-lettered on its
	// next return (see Topology.DeliveryLimit).
	DefaultDeliveryLimit = 20
)

// Queue arguments which amqp091-go has no names for.
const (
	argDeadLetterExchange   = "x-dead-letter-exchange"
	argDeadLetterRoutingKey = "x-dead-letter-routing-key"
	argDeliveryLimit        = "x-delivery-limit"
)

// maxNameBytes is AMQP's short string limit, which bounds queue, exchange
// and routing key names.
const maxNameBytes = 255

// Topology describes a durable queue with a dead-letter exchange and queue,
// optionally bound to an exchange. Declaring it is idempotent as long as the
// broker's existing objects have the same arguments; a difference fails with
// PRECONDITION_FAILED rather than changing them.
//
// The queues are quorum queues, and Queue has a delivery limit
// (x-delivery-limit, DeliveryLimit). That limit is what removes a message
// that no consumer can take: RabbitMQ accepts messages that amqp091-go cannot
// decode (header tables nested deeper than 32 levels), and each delivery of
// one kills the receiver's connection before it can reject it, so the message
// goes back to the head of the queue and blocks it. The broker counts every
// return of an unacked delivery, a lost connection included (measured on
// RabbitMQ 3.10), and dead-letters the message once the count passes the
// limit; the receiver takes one delivery at a time meanwhile, so that the
// messages behind it are not counted with it.
//
// The queue dead-letters into DeadLetterExchange (a direct exchange) with
// routing key DeadLetterQueue, and DeadLetterQueue is bound to it under that
// key, so one dead-letter exchange may serve several queues. The original
// routing key of a dead message stays in its x-death header.
type Topology struct {
	// Queue is the queue to declare. Required (in Config.Topology it
	// defaults to Config.Queue).
	Queue string
	// Classic declares classic durable queues, without a delivery limit, as
	// Topology did before quorum queues became its default. Set it for
	// queues that already exist as classic queues: the broker refuses to
	// redeclare a queue with another type (PRECONDITION_FAILED, which the
	// declaration's error explains). See docs/operations.md for moving such a
	// queue to a quorum queue.
	Classic bool
	// DeliveryLimit is Queue's x-delivery-limit: how many times a message may
	// be delivered and returned unacked (by a lost connection, a receiver
	// stopped mid-batch, a delivery it cannot decode) before the broker
	// dead-letters it. The receiver acks within milliseconds of a delivery,
	// so only a message that keeps failing reaches it. Negative means no
	// limit; ignored with Classic. Defaults to DefaultDeliveryLimit.
	DeliveryLimit int
	// DeadLetterExchange receives the messages the receiver rejects.
	// Defaults to Queue followed by DefaultDeadLetterExchangeSuffix.
	DeadLetterExchange string
	// DeadLetterQueue keeps them. Defaults to Queue followed by
	// DefaultDeadLetterQueueSuffix.
	DeadLetterQueue string
	// NoDeadLetter declares no dead-letter exchange or queue: rejected
	// messages are then dropped by the broker.
	NoDeadLetter bool
	// Exchange, when set, is declared (durable) and Queue is bound to it. The
	// predeclared amq.* exchanges are only bound to.
	Exchange string
	// ExchangeType is Exchange's type. Defaults to DefaultExchangeType.
	ExchangeType string
	// RoutingKeys bind Queue to Exchange. Defaults to DefaultRoutingKey.
	RoutingKeys []string
	// QueueArguments are added to Queue's declaration, for example
	// x-single-active-consumer or x-max-length. The dead-letter, queue type
	// and delivery limit arguments are set from the fields above.
	QueueArguments amqp091.Table
}

func (t Topology) withDefaults() Topology {
	setDefault(&t.DeadLetterExchange, t.Queue+DefaultDeadLetterExchangeSuffix)
	setDefault(&t.DeadLetterQueue, t.Queue+DefaultDeadLetterQueueSuffix)
	setDefault(&t.ExchangeType, DefaultExchangeType)
	setDefault(&t.DeliveryLimit, DefaultDeliveryLimit)
	if t.Exchange != "" && len(t.RoutingKeys) == 0 {
		t.RoutingKeys = []string{DefaultRoutingKey}
	}
	return t
}

func (t Topology) validate() error {
	if t.Queue == "" {
		return errors.New("Queue is required")
	}
	t = t.withDefaults()
	names := []struct{ field, name string }{
		{"Queue", t.Queue},
		{"DeadLetterExchange", t.DeadLetterExchange},
		{"DeadLetterQueue", t.DeadLetterQueue},
		{"Exchange", t.Exchange},
	}
	for _, n := range names {
		if len(n.name) > maxNameBytes {
			return fmt.Errorf("%s is longer than %d bytes", n.field, maxNameBytes)
		}
	}
	if t.Exchange == "" && len(t.RoutingKeys) > 0 {
		return errors.New("RoutingKeys need an Exchange")
	}
	for _, k := range t.RoutingKeys {
		if len(k) > maxNameBytes {
			return fmt.Errorf("routing key %q is longer than %d bytes", truncate(k, 40), maxNameBytes)
		}
	}
	if !t.NoDeadLetter && t.DeadLetterQueue == t.Queue {
		return errors.New("DeadLetterQueue must differ from Queue")
	}
	return nil
}

// declare declares t on ch; t has its defaults.
func (t Topology) declare(ch *amqp091.Channel) error {
	typed := func(args amqp091.Table) amqp091.Table {
		// Classic queues are declared without x-queue-type, so that queues
		// created before (or by tools that never set it) still match.
		if !t.Classic {
			args[amqp091.QueueTypeArg] = amqp091.QueueTypeQuorum
		}
		return args
	}
	args := amqp091.Table{}
	for k, v := range t.QueueArguments {
		args[k] = v
	}
	delete(args, argDeliveryLimit)
	if !t.Classic && t.DeliveryLimit > 0 {
		args[argDeliveryLimit] = int64(t.DeliveryLimit)
	}
	if !t.NoDeadLetter {
		if err := ch.ExchangeDeclare(t.DeadLetterExchange, amqp091.ExchangeDirect, true, false, false, false, nil); err != nil {
			return fmt.Errorf("declare dead-letter exchange %q: %w", t.DeadLetterExchange, err)
		}
		if _, err := ch.QueueDeclare(t.DeadLetterQueue, true, false, false, false, typed(amqp091.Table{})); err != nil {
			return fmt.Errorf("declare dead-letter queue %q: %w", t.DeadLetterQueue, explainInequivalent(err))
		}
		if err := ch.QueueBind(t.DeadLetterQueue, t.DeadLetterQueue, t.DeadLetterExchange, false, nil); err != nil {
			return fmt.Errorf("bind dead-letter queue %q to %q: %w", t.DeadLetterQueue, t.DeadLetterExchange, err)
		}
		args[argDeadLetterExchange] = t.DeadLetterExchange
		args[argDeadLetterRoutingKey] = t.DeadLetterQueue
	}
	if _, err := ch.QueueDeclare(t.Queue, true, false, false, false, typed(args)); err != nil {
		return fmt.Errorf("declare queue %q: %w", t.Queue, explainInequivalent(err))
	}
	if t.Exchange == "" {
		return nil
	}
	if !strings.HasPrefix(t.Exchange, "amq.") {
		if err := ch.ExchangeDeclare(t.Exchange, t.ExchangeType, true, false, false, false, nil); err != nil {
			return fmt.Errorf("declare exchange %q: %w", t.Exchange, err)
		}
	}
	for _, key := range t.RoutingKeys {
		if err := ch.QueueBind(t.Queue, key, t.Exchange, false, nil); err != nil {
			return fmt.Errorf("bind queue %q to %q with key %q: %w", t.Queue, t.Exchange, key, err)
		}
	}
	return nil
}

// Declare connects to the broker at url, declares t and disconnects. Use it
// at deployment or start-up; Config.Topology redeclares on every reconnect
// instead.
func Declare(ctx context.Context, url string, t Topology) error {
	if err := t.validate(); err != nil {
		return fmt.Errorf("amqp: declare topology: %w", err)
	}
	if !validURI(url) {
		return fmt.Errorf("amqp: declare topology: %s is not an amqp:// or amqps:// URI", redactURL(url))
	}
	t = t.withDefaults()
	link, err := dial(ctx, url, amqp091.Config{Properties: amqp091.Table{"connection_name": "inbox topology " + t.Queue}}, DefaultOpenTimeout)
	if err != nil {
		return fmt.Errorf("amqp: declare topology of %q: %w", t.Queue, err)
	}
	defer link.close(DefaultShutdownTimeout)
	err = link.bounded(ctx, DefaultOpenTimeout, "declare topology", func() error {
		ch, err := link.conn.Channel()
		if err != nil {
			return fmt.Errorf("open channel: %w", err)
		}
		if err := t.declare(ch); err != nil {
			return err
		}
		return ch.Close()
	})
	if err != nil {
		return fmt.Errorf("amqp: declare topology of %q: %w", t.Queue, err)
	}
	return nil
}

// inequivalentError is the broker's refusal to redeclare a queue with other
// arguments, with what to do about the ones Topology sets.
type inequivalentError struct {
	err  *amqp091.Error
	hint string
}

func (e *inequivalentError) Error() string { return e.err.Error() + "; " + e.hint }

func (e *inequivalentError) Unwrap() error { return e.err }

// explainInequivalent adds a remedy to PRECONDITION_FAILED for the queue
// type or the delivery limit, which an existing queue declared before
// Topology's defaults changed may lack.
func explainInequivalent(err error) error {
	var amqpErr *amqp091.Error
	if !errors.As(err, &amqpErr) || amqpErr.Code != amqp091.PreconditionFailed {
		return err
	}
	switch {
	case strings.Contains(amqpErr.Reason, "'"+amqp091.QueueTypeArg+"'"):
		return &inequivalentError{amqpErr, "the queue exists with another type: Topology declares quorum queues unless Topology.Classic is set; " +
			"set Classic to keep a classic queue, or move it to a quorum queue (docs/operations.md)"}
	case strings.Contains(amqpErr.Reason, "'"+argDeliveryLimit+"'"):
		return &inequivalentError{amqpErr, "the queue exists with another delivery limit: set Topology.DeliveryLimit to the queue's " +
			"(negative for none), or move the queue to a new one (docs/operations.md)"}
	}
	return err
}
