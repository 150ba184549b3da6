package amqp

import (
	"context"
	"errors"
	"fmt"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/inboxkit/inbox"
)

// pending is a delivery waiting for its store, kept whole in case Store
// refuses it and it must be dead-lettered. Its tag belongs to the channel of
// the session whose batch holds it: a batch never outlives its session, so
// no tag is ever acked on a later channel, where the same number means
// another delivery.
type pending struct {
	d  *amqp091.Delivery
	id string
}

// settler settles deliveries: the session's channel (a test's fake in the
// package's own tests).
type settler interface {
	Ack(tag uint64, multiple bool) error
	Reject(tag uint64, requeue bool) error
}

// session is one connection, channel and consumer. All its broker calls,
// acks included, are made by the goroutine that runs Run; only Store calls
// run elsewhere, on the committers (see pipeline.go). Acks go out in
// delivery-tag order, which is what makes Ack(multiple=true) safe: every
// earlier tag was acked or rejected before.
type session struct {
	r          *Receiver
	gen        uint64
	careful    bool // prefetch 1 until the first ack
	link       *link
	ch         *amqp091.Channel
	settle     settler
	connClosed chan *amqp091.Error
	chClosed   chan *amqp091.Error
	cancelled  chan string
	dead       *deadLetter // nil without a dead-letter exchange, or once it failed

	acked bool
	pipeline
}

// session runs one broker session until it fails or ctx ends. healthy
// reports whether it acked anything. A careful session takes one delivery at
// a time until its first ack, so that a delivery which kills it is the only
// one the broker counts as returned.
func (r *Receiver) session(ctx context.Context, gen uint64, careful bool) (healthy bool, err error) {
	l, err := dial(ctx, r.cfg.URL, r.cfg.AMQP, r.cfg.OpenTimeout)
	if err != nil {
		return false, fmt.Errorf("connect to %s: %w", redactURL(r.cfg.URL), err)
	}
	s := &session{
		r:          r,
		gen:        gen,
		careful:    careful,
		link:       l,
		connClosed: l.conn.NotifyClose(make(chan *amqp091.Error, 1)),
	}
	defer s.close()
	deliveries, err := s.open(ctx)
	if err != nil {
		return false, err
	}
	r.log.Info("consuming", "session", gen)
	err = s.consume(ctx, deliveries)
	return s.acked, err
}

// open opens the channel, declares the topology and starts the consumer,
// basic.qos first so the broker never sends more than the prefetch.
func (s *session) open(ctx context.Context) (<-chan amqp091.Delivery, error) {
	cfg := s.r.cfg
	err := s.link.bounded(ctx, cfg.OpenTimeout, "open channel", func() error {
		ch, err := s.link.conn.Channel()
		s.ch = ch
		return err
	})
	if err != nil {
		return nil, err
	}
	s.settle = s.ch
	s.chClosed = s.ch.NotifyClose(make(chan *amqp091.Error, 1))
	s.cancelled = s.ch.NotifyCancel(make(chan string, 1))
	if cfg.Topology != nil {
		t := cfg.Topology.withDefaults()
		if err := s.link.bounded(ctx, cfg.OpenTimeout, "declare topology", func() error { return t.declare(s.ch) }); err != nil {
			return nil, err
		}
	}
	if cfg.DeadLetterExchange != "" {
		if err := s.openDeadLetter(ctx); err != nil {
			return nil, err
		}
	}
	prefetch := cfg.Prefetch
	if s.careful {
		prefetch = 1
	}
	err = s.link.bounded(ctx, cfg.OpenTimeout, "set prefetch", func() error {
		return s.ch.Qos(prefetch, 0, false)
	})
	if err != nil {
		return nil, err
	}
	var deliveries <-chan amqp091.Delivery
	err = s.link.bounded(ctx, cfg.OpenTimeout, fmt.Sprintf("consume queue %q", cfg.Queue), func() error {
		var err error
		deliveries, err = s.ch.Consume(cfg.Queue, cfg.ConsumerTag, false, cfg.Exclusive, false, false, nil)
		return err
	})
	if err != nil {
		return nil, err
	}
	return deliveries, nil
}

// close ends the session: it stops the committers and waits for them, and
// closes the connection, so unacked deliveries go back to the queue. It
// drains the notification channels amqp091-go closes on shutdown.
func (s *session) close() {
	s.stopPipeline()
	s.link.close(s.r.cfg.ShutdownTimeout)
	for _, c := range []chan *amqp091.Error{s.connClosed, s.chClosed} {
		drain(c)
	}
	drain(s.cancelled)
}

func drain[T any](c chan T) {
	for c != nil {
		select {
		case _, ok := <-c:
			if !ok {
				return
			}
		default:
			return
		}
	}
}

// consume gathers deliveries into batches and hands them to the committers
// until the session ends. It stops reading deliveries while a full batch
// waits for a free slot.
func (s *session) consume(ctx context.Context, deliveries <-chan amqp091.Delivery) error {
	cfg := s.r.cfg
	s.startPipeline(ctx)
	var cancelledBy error
	for {
		in := deliveries
		if s.full() {
			in = nil
		}
		select {
		case <-ctx.Done():
			return s.finish(ctx)
		case e := <-s.connClosed:
			return lost("connection", e)
		case e := <-s.chClosed:
			return lost("channel", e)
		case tag, ok := <-s.cancelled:
			s.cancelled = nil
			if !ok {
				// Closed with the channel, whose reason is in chClosed.
				continue
			}
			// The deliveries already received stay ackable on this channel;
			// the deliveries channel closes once they are all read.
			cancelledBy = fmt.Errorf("consumer %q: %w", tag, errConsumerCancelled)
		case d, ok := <-in:
			if !ok {
				// amqp091-go reports the reason before it closes the
				// deliveries channel of a channel that shuts down.
				if err := s.closedBy(); err != nil {
					return err
				}
				if err := s.finish(ctx); err != nil {
					return err
				}
				if cancelledBy != nil {
					return cancelledBy
				}
				return errors.New("the deliveries channel closed")
			}
			s.add(&d)
			if len(s.gather.items) >= cfg.BatchSize {
				s.launch()
			} else if len(s.gather.items) == 1 {
				s.linger.Reset(cfg.BatchLinger)
			}
		case <-s.linger.C:
			s.lingered = true
			s.launch()
		case b := <-s.done:
			if err := s.committed(b); err != nil {
				return err
			}
			s.launch()
		}
	}
}

// closedBy returns why the connection or the channel closed, or nil if
// neither has.
func (s *session) closedBy() error {
	select {
	case e := <-s.connClosed:
		return lost("connection", e)
	case e := <-s.chClosed:
		return lost("channel", e)
	default:
		return nil
	}
}

// whyClosed returns, for err from a call that found the channel closed, the
// reason the connection or channel closed, which amqp091-go reports just
// after it marks them closed. The session's end is then logged, and
// classified (an undecodable delivery, say), by its cause.
func (s *session) whyClosed(err error) error {
	if !errors.Is(err, amqp091.ErrClosed) {
		return err
	}
	timer := time.NewTimer(s.r.cfg.OpenTimeout)
	defer timer.Stop()
	select {
	case e := <-s.connClosed:
		return lost("connection", e)
	case e := <-s.chClosed:
		return lost("channel", e)
	case <-timer.C:
		return err
	}
}

// lost says why the session's channel went away; e is nil after a clean
// close.
func lost(what string, e *amqp091.Error) error {
	if e == nil {
		return fmt.Errorf("%s closed", what)
	}
	return fmt.Errorf("%s closed: %w", what, e)
}

// add maps d into the batch, or rejects it to the dead-letter exchange.
func (s *session) add(d *amqp091.Delivery) {
	s.r.stats.received.Add(1)
	s.r.metrics.Received(context.Background(), 1)
	msg, rej := s.r.mapper.message(d)
	if rej == nil {
		if err := s.r.store.Validate(msg); err != nil {
			rej = &rejection{reason: "invalid message", detail: err.Error()}
			var inv *inbox.InvalidMessageError
			if errors.As(err, &inv) {
				rej = &rejection{reason: inv.Reason, detail: inv.Detail}
			}
		}
	}
	if rej != nil {
		s.reject(d, msg.ID, rej)
		return
	}
	s.gather.items = append(s.gather.items, pending{d: d, id: msg.ID})
	s.gather.msgs = append(s.gather.msgs, msg)
}

// reject dead-letters a delivery: a copy with the reason goes to the
// dead-letter exchange and the delivery is acked once the copy is
// confirmed, or failing that the delivery is rejected for the broker to
// dead-letter. The delivery is settled on its own (multiple=false) before
// any batch ack covers its tag: at once for a delivery that never joins a
// batch, just before its batch's ack for one that Store refused. A failure to settle means the channel
// is going away, which the consume loop notices; the broker then redelivers
// the message, and it is rejected again.
func (s *session) reject(d *amqp091.Delivery, id string, rej *rejection) {
	s.r.stats.reject(rej.reason)
	s.r.metrics.Malformed(context.Background(), rej.reason)
	args := []any{
		"reason", rej.reason,
		"detail", rej.detail,
		"message_id", truncate(id, 128),
		"delivery_tag", d.DeliveryTag,
		"routing_key", truncate(d.RoutingKey, 128),
		"redelivered", d.Redelivered,
		"session", s.gen,
	}
	if s.r.cfg.DeadLetterExchange != "" {
		err := s.publishDeadLetter(d, rej)
		if err == nil {
			if err := s.settle.Ack(d.DeliveryTag, false); err != nil {
				s.r.log.Warn("could not ack bad message after publishing its dead-letter copy; it will be redelivered and dead-lettered again",
					append(args, "error", err)...)
				return
			}
			s.r.log.Warn("dead-lettered bad message with its reason", append(args, "exchange", s.r.cfg.DeadLetterExchange)...)
			return
		}
		s.r.log.Warn("could not publish the dead-letter copy of a bad message; rejecting it to the broker's dead-lettering, without the reason",
			append(args, "exchange", s.r.cfg.DeadLetterExchange, "error", err)...)
	}
	if err := s.settle.Reject(d.DeliveryTag, false); err != nil {
		s.r.log.Warn("could not reject bad message; it will be redelivered", append(args, "error", err)...)
		return
	}
	s.r.log.Warn("rejected bad message to the dead-letter exchange", args...)
}
