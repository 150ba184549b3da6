package amqp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
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
// batches, several at once, and acks them in delivery order, each only once
// its batch and every batch before it are committed. Create it with
// NewReceiver and call Run.
type Receiver struct {
	store  Store
	cfg    Config
	log    *slog.Logger
	mapper mapper

	running atomic.Bool
	stats   counters
	metrics *Metrics
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
	metrics, err := NewMetrics(cfg.MeterProvider, cfg.Source)
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
// is cancelled it stores and acks the batches in flight and the batch in
// hand (within Config.ShutdownTimeout), leaves every later delivery unacked
// for the broker to redeliver, closes the connection and returns nil. It returns an error
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
