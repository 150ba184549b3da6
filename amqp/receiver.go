package amqp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
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

	retry := newBackOff(r.cfg.ReconnectInitial, r.cfg.ReconnectMax)
	r.log.Info("receiver starting", "url", redactURL(r.cfg.URL), "prefetch", r.cfg.Prefetch, "batch_size", r.cfg.BatchSize)
	// undecodable counts the sessions in a row killed by a delivery that
	// amqp091-go could not decode; while it is not zero, sessions take one
	// delivery at a time (see Topology).
	undecodable := 0
	for gen := uint64(1); ; gen++ {
		started := time.Now()
		healthy, err := r.session(ctx, gen, undecodable > 0)
		if ctx.Err() != nil {
			if err != nil && !errors.Is(err, ctx.Err()) {
				r.log.Warn("receiver stopped; deliveries it could not ack will be redelivered", "error", err)
			} else {
				r.log.Info("receiver stopped")
			}
			return nil
		}
		switch {
		case isUndecodable(err) && healthy:
			undecodable = 1
		case isUndecodable(err):
			undecodable++
		case healthy:
			undecodable = 0
		}
		if isUndecodable(err) {
			r.stats.undecodable.Add(1)
		}
		// A session that acked something, or lasted as long as the longest
		// wait, was healthy: the next failure starts from a short wait again.
		// So was one that an undecodable delivery killed: the broker is
		// fine, and each quick return brings the message nearer to its
		// queue's delivery limit.
		if healthy || time.Since(started) >= r.cfg.ReconnectMax || (isUndecodable(err) && undecodable <= undecodableFastRetries) {
			retry.Reset()
		}
		delay := retry.NextBackOff()
		r.logSessionEnd(gen, err, delay, undecodable)
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

// newBackOff returns a capped exponential backoff without an end. Reset
// applies initial: a new ExponentialBackOff starts from the library's own
// default.
func newBackOff(initial, maxInterval time.Duration) cappedBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = initial
	b.MaxInterval = maxInterval
	b.MaxElapsedTime = 0
	b.Reset()
	return cappedBackOff{b}
}

// cappedBackOff never waits longer than its MaxInterval: backoff/v4 caps
// the interval before it adds the jitter, so a wait could reach 1.5 times
// the maximum the configuration promises.
type cappedBackOff struct{ *backoff.ExponentialBackOff }

func (c cappedBackOff) NextBackOff() time.Duration {
	return min(c.ExponentialBackOff.NextBackOff(), c.MaxInterval)
}

// errConsumerCancelled is a basic.cancel from the broker: the queue was
// deleted, or a replicated queue's leader moved.
var errConsumerCancelled = errors.New("the broker cancelled the consumer (queue deleted?)")

// undecodableFastRetries bounds the sessions in a row, killed by an
// undecodable delivery, that are retried without a growing wait: enough for
// any sane delivery limit to remove the message. Past it the queue has no
// such limit, and the normal backoff spares the broker.
const undecodableFastRetries = 50

// isUndecodable reports whether err is amqp091-go giving up on a frame it
// could not decode, such as a delivery with headers nested deeper than it
// reads. amqp091-go closes the connection with the decoding error flattened
// into the reason, so its text is all there is to match.
func isUndecodable(err error) bool {
	var amqpErr *amqp091.Error
	if !errors.As(err, &amqpErr) || amqpErr.Server || amqpErr.Code != amqp091.FrameError {
		return false
	}
	return strings.Contains(amqpErr.Reason, amqp091.ErrSyntax.Reason) || strings.Contains(amqpErr.Reason, amqp091.ErrFrame.Reason)
}

func (r *Receiver) logSessionEnd(gen uint64, err error, delay time.Duration, undecodable int) {
	args := []any{"session", gen, "error", err, "retry_in", delay}
	var amqpErr *amqp091.Error
	switch {
	case isUndecodable(err) && undecodable > 1:
		r.log.Error("a delivery at the head of the queue cannot be decoded (amqp091-go reads header tables at most 32 levels deep) "+
			"and kills every session; only a delivery limit makes the broker remove it: declare the queue as a quorum queue "+
			"with x-delivery-limit and a dead-letter exchange (amqp.Topology's default), or remove the message by hand",
			append(args, "sessions_in_a_row", undecodable)...)
	case isUndecodable(err):
		r.log.Warn("a delivery could not be decoded and the connection died; the next session takes one delivery at a time", args...)
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

// pending is a delivery waiting in the batch for its store, kept whole in
// case Store refuses it and it must be dead-lettered. Its tag belongs to
// the channel of the session whose batch holds it: a batch never outlives
// its session, so no tag is ever acked on a later channel, where the same
// number means another delivery.
type pending struct {
	d  *amqp091.Delivery
	id string
}

// session is one connection, channel and consumer. All its broker calls,
// acks included, are made by the goroutine that runs Run, which is what
// makes Ack(multiple=true) safe: every earlier tag was acked or rejected
// before.
type session struct {
	r          *Receiver
	gen        uint64
	careful    bool // prefetch 1 until the first ack
	link       *link
	ch         *amqp091.Channel
	connClosed chan *amqp091.Error
	chClosed   chan *amqp091.Error
	cancelled  chan string
	dead       *deadLetter // nil without a dead-letter exchange, or once it failed

	batch  []pending
	msgs   []inbox.Message
	acked  bool
	linger *time.Timer
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
		case tag, ok := <-s.cancelled:
			s.cancelled = nil
			if !ok {
				// Closed with the channel, whose reason is in chClosed.
				continue
			}
			// The deliveries already received stay ackable on this channel;
			// the deliveries channel closes once they are all read.
			cancelledBy = fmt.Errorf("consumer %q: %w", tag, errConsumerCancelled)
		case d, ok := <-deliveries:
			if !ok {
				// amqp091-go reports the reason before it closes the
				// deliveries channel of a channel that shuts down.
				if err := s.closedBy(); err != nil {
					return err
				}
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
	s.batch = append(s.batch, pending{d: d, id: msg.ID})
	s.msgs = append(s.msgs, msg)
}

// reject dead-letters a delivery: a copy with the reason goes to the
// dead-letter exchange and the delivery is acked once the copy is
// confirmed, or failing that the delivery is rejected for the broker to
// dead-letter. The delivery is settled on its own (multiple=false) before
// any later batch ack covers its tag. A failure to settle means the channel
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
			if err := s.ch.Ack(d.DeliveryTag, false); err != nil {
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
	if err := s.ch.Reject(d.DeliveryTag, false); err != nil {
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
	var retry *cappedBackOff
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
			s.reject(bad.d, bad.id, &rejection{reason: inv.Reason, detail: inv.Detail})
			s.batch = append(s.batch[:inv.Index], s.batch[inv.Index+1:]...)
			s.msgs = append(s.msgs[:inv.Index], s.msgs[inv.Index+1:]...)
			if len(s.batch) == 0 {
				return nil
			}
			continue
		}
		s.r.stats.storeFailures.Add(1)
		if retry == nil {
			b := newBackOff(cfg.StoreRetryInitial, cfg.StoreRetryMax)
			retry = &b
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
	last := s.batch[n-1].d.DeliveryTag
	clear(s.msgs) // drop the bodies
	clear(s.batch)
	s.batch, s.msgs = s.batch[:0], s.msgs[:0]
	s.r.stats.stored.Add(uint64(res.Stored))
	s.r.stats.duplicates.Add(uint64(res.Duplicates))
	if err := s.ch.Ack(last, true); err != nil {
		// The rows are committed, so the redelivery is a duplicate.
		return fmt.Errorf("ack %d stored deliveries: %w", n, s.whyClosed(err))
	}
	s.acked = true
	s.r.stats.acked.Add(uint64(n))
	s.r.log.Debug("stored and acked batch", "deliveries", n, "new", res.Stored, "duplicates", res.Duplicates, "session", s.gen)
	if s.careful {
		s.careful = false
		err := s.link.bounded(context.Background(), s.r.cfg.OpenTimeout, "restore the prefetch", func() error {
			return s.ch.Qos(s.r.cfg.Prefetch, 0, false)
		})
		if err != nil {
			return s.whyClosed(err)
		}
		s.r.log.Info("the delivery after the undecodable one was stored; back to the full prefetch", "session", s.gen)
	}
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
	// Undecodable counts sessions killed by a delivery that amqp091-go could
	// not decode (see Topology).
	Undecodable uint64
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
	undecodable                         atomic.Uint64

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
		Undecodable:   c.undecodable.Load(),
	}
}
