package amqp

import (
	"context"
	"errors"
	"fmt"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Headers the receiver adds to the copy of a delivery it dead-letters, so
// that whoever drains the dead-letter queue knows why it is there. The broker
// adds no x-death header to such a copy: it was published, not
// dead-lettered by the broker.
const (
	// HeaderRejectReason is the rejection reason: an inbox.Reason constant,
	// ReasonBadStream or ReasonHeadersTooLarge.
	HeaderRejectReason = "x-inbox-reject-reason"
	// HeaderRejectDetail says more, when there is more to say (which header
	// was wrong and how, a size and its limit).
	HeaderRejectDetail = "x-inbox-reject-detail"
	// HeaderRejectQueue is the queue the delivery was rejected from.
	HeaderRejectQueue = "x-inbox-reject-queue"
	// HeaderRejectExchange and HeaderRejectRoutingKey are the exchange and
	// routing key the message was first published with, needed to publish
	// it again.
	HeaderRejectExchange   = "x-inbox-reject-exchange"
	HeaderRejectRoutingKey = "x-inbox-reject-routing-key"
)

// deadLetter is the session's channel for the copies of rejected
// deliveries, in confirm mode. It is opened with the session and given up
// on for the rest of the session at its first failure.
type deadLetter struct {
	ch      *amqp091.Channel
	returns chan amqp091.Return
}

// openDeadLetter opens the channel for dead-letter copies.
func (s *session) openDeadLetter(ctx context.Context) error {
	cfg := s.r.cfg
	return s.link.bounded(ctx, cfg.OpenTimeout, "open the dead-letter channel", func() error {
		ch, err := s.link.conn.Channel()
		if err != nil {
			return err
		}
		if err := ch.Confirm(false); err != nil {
			return fmt.Errorf("confirm mode: %w", err)
		}
		// One at a time is ever in flight, and each return is read before
		// the next publish: amqp091-go blocks its reader on a full one.
		s.dead = &deadLetter{ch: ch, returns: ch.NotifyReturn(make(chan amqp091.Return, 1))}
		return nil
	})
}

// publishDeadLetter publishes a copy of d, with rej in its headers, to the
// dead-letter exchange, and returns nil once the broker confirmed it and
// routed it to a queue.
func (s *session) publishDeadLetter(d *amqp091.Delivery, rej *rejection) error {
	if s.dead == nil {
		return errors.New("no dead-letter channel in this session")
	}
	cfg := s.r.cfg
	key := cfg.DeadLetterRoutingKey
	if key == "" {
		key = d.RoutingKey
	}
	headers := make(amqp091.Table, len(d.Headers)+5)
	for k, v := range d.Headers {
		headers[k] = v
	}
	headers[HeaderRejectReason] = rej.reason
	headers[HeaderRejectDetail] = rej.detail
	headers[HeaderRejectQueue] = cfg.Queue
	headers[HeaderRejectExchange] = d.Exchange
	headers[HeaderRejectRoutingKey] = d.RoutingKey
	// As when the broker dead-letters: no expiration, so that the copy does
	// not expire from the dead-letter queue. The user ID is dropped, as the
	// broker refuses one that is not the receiver's own.
	msg := amqp091.Publishing{
		Headers:         headers,
		ContentType:     d.ContentType,
		ContentEncoding: d.ContentEncoding,
		DeliveryMode:    d.DeliveryMode,
		Priority:        d.Priority,
		CorrelationId:   d.CorrelationId,
		ReplyTo:         d.ReplyTo,
		MessageId:       d.MessageId,
		Timestamp:       d.Timestamp,
		Type:            d.Type,
		AppId:           d.AppId,
		Body:            d.Body,
	}
	err := s.link.bounded(context.Background(), cfg.OpenTimeout, "publish the dead-letter copy", func() error {
		c, err := s.dead.ch.PublishWithDeferredConfirm(cfg.DeadLetterExchange, key, true, false, msg)
		if err != nil {
			return err
		}
		// A channel that closes also ends the wait, unacked.
		<-c.Done()
		if !c.Acked() {
			return errors.New("the broker did not confirm it")
		}
		return nil
	})
	if err != nil {
		s.dead = nil
		return err
	}
	select {
	case ret := <-s.dead.returns:
		return fmt.Errorf("exchange %q has no queue bound for routing key %q (%s)", ret.Exchange, ret.RoutingKey, ret.ReplyText)
	default:
		return nil
	}
}
