package amqp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/inboxkit/inbox"
)

// Store is what the Receiver needs from the inbox; *inbox.Inbox satisfies
// it.
type Store interface {
	// Validate reports, as an *inbox.InvalidMessageError, why Store would
	// refuse msg.
	Validate(msg inbox.Message) error
	// Store saves msgs in one statement: when it returns nil they are
	// committed (or were duplicates), so the deliveries may be acked.
	Store(ctx context.Context, msgs ...inbox.Message) (inbox.StoreResult, error)
}

// Receiver consumes one queue into the inbox: it stores deliveries in
// batches and acks them only once their batch is committed. Create it with
// NewReceiver and call Run.
type Receiver struct {
	store  Store
	cfg    Config
	log    *slog.Logger
	mapper mapper

	running atomic.Bool
	stats   counters
	metrics *inbox.ReceiverMetrics
}

// NewReceiver returns a Receiver that stores into store. It does not connect:
// Run does.
func NewReceiver(store Store, cfg Config) (*Receiver, error) {
	if store == nil {
		return nil, errors.New("amqp: NewReceiver: store is nil")
	}
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	props := amqp091.Table{}
	for k, v := range cfg.AMQP.Properties {
		props[k] = v
	}
	if len(props) == 0 {
		props = amqp091.NewConnectionProperties()
	}
	if _, ok := props["connection_name"]; !ok {
		props["connection_name"] = cfg.ConnectionName
	}
	cfg.AMQP.Properties = props
	metrics, err := inbox.NewReceiverMetrics(cfg.MeterProvider, cfg.Source)
	if err != nil {
		return nil, fmt.Errorf("amqp: NewReceiver: metrics: %w", err)
	}
	return &Receiver{
		store:   store,
		cfg:     cfg,
		log:     cfg.Logger.With("component", "inbox-amqp", "queue", cfg.Queue),
		mapper:  newMapper(cfg),
		metrics: metrics,
	}, nil
}

// Config returns the configuration in force, defaults filled in.
func (r *Receiver) Config() Config { return r.cfg }

// Run consumes until ctx is cancelled, reconnecting with capped exponential
// backoff whenever the connection, the channel or the consumer ends. When ctx
// is cancelled it stores and acks the batch in hand (within
// Config.ShutdownTimeout), leaves every later delivery unacked for the broker
// to redeliver, closes the connection and returns nil. It returns an error
// only if the Receiver is already running.
func (r *Receiver) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("amqp: Receiver.Run: already running")
	}
	defer r.running.Store(false)

	retry := backoff.NewExponentialBackOff()
	retry.InitialInterval = r.cfg.ReconnectInitial
	retry.MaxInterval = r.cfg.ReconnectMax
	retry.MaxElapsedTime = 0
	r.log.Info("receiver starting", "url", redactURL(r.cfg.URL), "prefetch", r.cfg.Prefetch, "batch_size", r.cfg.BatchSize)
	for gen := uint64(1); ; gen++ {
		started := time.Now()
		healthy, err := r.session(ctx, gen)
		if ctx.Err() != nil {
			if err != nil && !errors.Is(err, ctx.Err()) {
				r.log.Warn("receiver stopped; deliveries it could not ack will be redelivered", "error", err)
			} else {
				r.log.Info("receiver stopped")
			}
			return nil
		}
		// A session that acked something, or lasted as long as the longest
		// wait, was healthy: the next failure starts from a short wait again.
		if healthy || time.Since(started) >= r.cfg.ReconnectMax {
			retry.Reset()
		}
		delay := retry.NextBackOff()
		r.logSessionEnd(gen, err, delay)
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			r.log.Info("receiver stopped")
			return nil
		case <-timer.C:
		}
		r.stats.reconnects.Add(1)
	}
}

// errConsumerCancelled is a basic.cancel from the broker: the queue was
// deleted, or a replicated queue's leader moved.
var errConsumerCancelled = errors.New("the broker cancelled the consumer (queue deleted?)")

func (r *Receiver) logSessionEnd(gen uint64, err error, delay time.Duration) {
	args := []any{"session", gen, "error", err, "retry_in", delay}
	var amqpErr *amqp091.Error
	switch {
	case errors.As(err, &amqpErr) && amqpErr.Code == amqp091.NotFound:
		r.log.Error("queue not found; declare it, or set Config.Topology to have the receiver declare it", args...)
	case errors.As(err, &amqpErr) && (amqpErr.Code == amqp091.AccessRefused || amqpErr.Code == amqp091.PreconditionFailed):
		r.log.Error("broker refused the session; check credentials, permissions and queue arguments", args...)
	case errors.Is(err, errConsumerCancelled):
		r.log.Error("consumer cancelled by the broker; reconnecting", args...)
	default:
		r.log.Warn("broker session ended; reconnecting", args...)
	}
}

// pending is a delivery waiting in the batch for its store. Its tag belongs to
// the channel of the session whose batch holds it: a batch never outlives
// its session, so no tag is ever acked on a later channel, where the same
// number means another delivery.
type pending struct {
	tag uint64
	id  string
}

// session is one connection, channel and consumer. All its broker calls,
// acks included, are made by the goroutine that runs Run, which is what
// makes Ack(multiple=true) safe: every earlier tag was acked or rejected
// before.
type session struct {
	r          *Receiver
	gen        uint64
	link       *link
	ch         *amqp091.Channel
	connClosed chan *amqp091.Error
	chClosed   chan *amqp091.Error
	cancelled  chan string

	batch  []pending
	msgs   []inbox.Message
	acked  bool
	linger *time.Timer
}

// session runs one broker session until it fails or ctx ends. healthy
// reports whether it acked anything.
func (r *Receiver) session(ctx context.Context, gen uint64) (healthy bool, err error) {
	l, err := dial(ctx, r.cfg.URL, r.cfg.AMQP, r.cfg.OpenTimeout)
	if err != nil {
		return false, fmt.Errorf("connect to %s: %w", redactURL(r.cfg.URL), err)
	}
	s := &session{
		r:          r,
		gen:        gen,
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
	s.chClosed = s.ch.NotifyClose(make(chan *amqp091.Error, 1))
	s.cancelled = s.ch.NotifyCancel(make(chan string, 1))
	if cfg.Topology != nil {
		t := cfg.Topology.withDefaults()
		if err := s.link.bounded(ctx, cfg.OpenTimeout, "declare topology", func() error { return t.declare(s.ch) }); err != nil {
			return nil, err
		}
	}
	err = s.link.bounded(ctx, cfg.OpenTimeout, "set prefetch", func() error {
		return s.ch.Qos(cfg.Prefetch, 0, false)
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

// close ends the session: unacked deliveries go back to the queue. It drains
// the notification channels amqp091-go closes on shutdown.
func (s *session) close() {
	if s.linger != nil {
		s.linger.Stop()
	}
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

// consume gathers deliveries into batches until the session ends.
func (s *session) consume(ctx context.Context, deliveries <-chan amqp091.Delivery) error {
	cfg := s.r.cfg
	s.linger = time.NewTimer(cfg.BatchLinger)
	s.linger.Stop()
	var cancelledBy error
	for {
		select {
		case <-ctx.Done():
			return s.flush(ctx)
		case e := <-s.connClosed:
			return lost("connection", e)
		case e := <-s.chClosed:
			return lost("channel", e)
		case tag := <-s.cancelled:
			// The deliveries already received stay ackable on this channel;
			// the deliveries channel closes once they are all read.
			s.cancelled = nil
			cancelledBy = fmt.Errorf("consumer %q: %w", tag, errConsumerCancelled)
		case d, ok := <-deliveries:
			if !ok {
				if err := s.flush(ctx); err != nil {
					return err
				}
				if cancelledBy != nil {
					return cancelledBy
				}
				return errors.New("the deliveries channel closed")
			}
			s.add(&d)
			if len(s.batch) >= cfg.BatchSize {
				if err := s.flush(ctx); err != nil {
					return err
				}
			} else if len(s.batch) == 1 {
				s.linger.Reset(cfg.BatchLinger)
			}
		case <-s.linger.C:
			if err := s.flush(ctx); err != nil {
				return err
			}
		}
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
		s.reject(d.DeliveryTag, msg.ID, d, rej)
		return
	}
	s.batch = append(s.batch, pending{tag: d.DeliveryTag, id: msg.ID})
	s.msgs = append(s.msgs, msg)
}

// reject sends a delivery to the queue's dead-letter exchange. A failure
// means the channel is going away, which the consume loop notices; the
// broker then redelivers the message, and it is rejected again.
func (s *session) reject(tag uint64, id string, d *amqp091.Delivery, rej *rejection) {
	s.r.stats.reject(rej.reason)
	s.r.metrics.Malformed(context.Background(), rej.reason)
	err := s.ch.Reject(tag, false)
	args := []any{
		"reason", rej.reason,
		"detail", rej.detail,
		"message_id", truncate(id, 128),
		"delivery_tag", tag,
		"session", s.gen,
	}
	if d != nil {
		args = append(args, "routing_key", truncate(d.RoutingKey, 128), "redelivered", d.Redelivered)
	}
	if err != nil {
		s.r.log.Warn("could not reject bad message; it will be redelivered", append(args, "error", err)...)
		return
	}
	s.r.log.Warn("rejected bad message to the dead-letter exchange", args...)
}

// errNotStored ends a shutdown whose last batch could not be stored in time.
var errNotStored = errors.New("batch not stored before the shutdown timeout")

// flush stores the batch and acks it. While the store fails it retries with
// backoff for as long as the channel lives, acking nothing: the deliveries
// stay unacked, and if the channel dies the broker redelivers them. Once ctx
// is cancelled it keeps trying for Config.ShutdownTimeout.
func (s *session) flush(ctx context.Context) error {
	s.linger.Stop()
	if len(s.batch) == 0 {
		return nil
	}
	cfg := s.r.cfg
	var deadline time.Time
	stop := ctx.Done()
	if ctx.Err() != nil {
		deadline = time.Now().Add(cfg.ShutdownTimeout)
		stop = nil
	}
	var retry *backoff.ExponentialBackOff
	for attempt := 1; ; attempt++ {
		res, err := s.storeOnce(ctx, deadline)
		if err == nil {
			return s.ack(res)
		}
		var inv *inbox.InvalidMessageError
		if errors.As(err, &inv) && inv.Index >= 0 && inv.Index < len(s.batch) {
			// Validate let it through but Store did not (a handler
			// unregistered, say): only this one is at fault.
			bad := s.batch[inv.Index]
			s.reject(bad.tag, bad.id, nil, &rejection{reason: inv.Reason, detail: inv.Detail})
			s.batch = append(s.batch[:inv.Index], s.batch[inv.Index+1:]...)
			s.msgs = append(s.msgs[:inv.Index], s.msgs[inv.Index+1:]...)
			if len(s.batch) == 0 {
				return nil
			}
			continue
		}
		s.r.stats.storeFailures.Add(1)
		if retry == nil {
			retry = backoff.NewExponentialBackOff()
			retry.InitialInterval = cfg.StoreRetryInitial
			retry.MaxInterval = cfg.StoreRetryMax
			retry.MaxElapsedTime = 0
		}
		wait := retry.NextBackOff()
		if !deadline.IsZero() && time.Until(deadline) < wait {
			s.r.log.Warn("could not store the last batch before shutdown; its deliveries stay unacked for redelivery",
				"deliveries", len(s.batch), "attempts", attempt, "error", err, "session", s.gen)
			return fmt.Errorf("store batch of %d: %w: %w", len(s.batch), errNotStored, err)
		}
		s.r.log.Warn("could not store batch; its deliveries stay unacked and the store is retried",
			"deliveries", len(s.batch), "attempt", attempt, "retry_in", wait, "error", err, "session", s.gen)
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-stop:
			timer.Stop()
			deadline = time.Now().Add(cfg.ShutdownTimeout)
			stop = nil
		case e := <-s.connClosed:
			timer.Stop()
			return lost("connection", e)
		case e := <-s.chClosed:
			timer.Stop()
			return lost("channel", e)
		}
	}
}

// storeOnce makes one attempt. It does not end with ctx: a batch in hand is
// finished on cancel, within StoreTimeout, or the shutdown deadline once
// there is one.
func (s *session) storeOnce(ctx context.Context, deadline time.Time) (inbox.StoreResult, error) {
	storeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.r.cfg.StoreTimeout)
	defer cancel()
	if !deadline.IsZero() {
		var cancelDeadline context.CancelFunc
		storeCtx, cancelDeadline = context.WithDeadline(storeCtx, deadline)
		defer cancelDeadline()
	}
	return s.r.store.Store(storeCtx, s.msgs...)
}

// ack acknowledges the whole batch with one multiple ack on the batch's last
// tag, and empties the batch.
func (s *session) ack(res inbox.StoreResult) error {
	n := len(s.batch)
	last := s.batch[n-1].tag
	clear(s.msgs) // drop the bodies
	s.batch, s.msgs = s.batch[:0], s.msgs[:0]
	s.r.stats.stored.Add(uint64(res.Stored))
	s.r.stats.duplicates.Add(uint64(res.Duplicates))
	if err := s.ch.Ack(last, true); err != nil {
		// The rows are committed, so the redelivery is a duplicate.
		return fmt.Errorf("ack %d stored deliveries: %w", n, err)
	}
	s.acked = true
	s.r.stats.acked.Add(uint64(n))
	s.r.log.Debug("stored and acked batch", "deliveries", n, "new", res.Stored, "duplicates", res.Duplicates, "session", s.gen)
	return nil
}

// Stats are the Receiver's counters since NewReceiver.
type Stats struct {
	// Received counts deliveries taken from the broker, redeliveries
	// included.
	Received uint64
	// Acked counts deliveries acked after their batch was stored.
	Acked uint64
	// Stored and Duplicates count the outcomes of stored batches: new rows,
	// and deliveries whose message was already stored (redeliveries
	// included). A store retried after a commit whose outcome was unknown
	// counts its messages as duplicates.
	Stored, Duplicates uint64
	// Rejected counts deliveries rejected to the dead-letter exchange, by
	// reason (the inbox.Reason constants, ReasonBadStream,
	// ReasonHeadersTooLarge).
	Rejected map[string]uint64
	// StoreFailures counts failed attempts to store a batch.
	StoreFailures uint64
	// Reconnects counts broker sessions after the first.
	Reconnects uint64
}

// RejectedTotal sums Rejected.
func (s Stats) RejectedTotal() uint64 {
	var n uint64
	for _, v := range s.Rejected {
		n += v
	}
	return n
}

// Stats returns a snapshot of the counters. It is safe to call at any time.
func (r *Receiver) Stats() Stats {
	return r.stats.snapshot()
}

type counters struct {
	received, acked, stored, duplicates atomic.Uint64
	storeFailures, reconnects           atomic.Uint64

	mu       sync.Mutex
	rejected map[string]uint64
}

func (c *counters) reject(reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rejected == nil {
		c.rejected = map[string]uint64{}
	}
	c.rejected[reason]++
}

func (c *counters) snapshot() Stats {
	c.mu.Lock()
	rejected := make(map[string]uint64, len(c.rejected))
	for k, v := range c.rejected {
		rejected[k] = v
	}
	c.mu.Unlock()
	return Stats{
		Received:      c.received.Load(),
		Acked:         c.acked.Load(),
		Stored:        c.stored.Load(),
		Duplicates:    c.duplicates.Load(),
		Rejected:      rejected,
		StoreFailures: c.storeFailures.Load(),
		Reconnects:    c.reconnects.Load(),
	}
}
