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

// Relay publishes the messages of an inbox.Outbox to RabbitMQ. Each batch is
// published with the mandatory flag on a channel in confirm mode, and a
// message is marked sent only after the broker confirmed it and did not
// return it as unroutable. Per stream, a message is published only after
// the previous one is confirmed and marked; streams go in parallel. Several
// relays, in one process or many, share an outbox: a claim locks its rows
// with SKIP LOCKED, so no two relays publish a message at the same time.
// Create it with NewRelay and call Run.
type Relay struct {
	ob  *inbox.Outbox
	cfg RelayConfig
	log *slog.Logger

	running atomic.Bool
	stats   relayCounters
	// isolate counts the messages still to publish one by one after a
	// channel error in a batch, so that the one the broker refuses is found
	// and charged with it.
	isolate int
	// beforeSettle, for tests, runs between a batch's confirms and their
	// recording.
	beforeSettle func()
}

// NewRelay returns a Relay that publishes ob's messages. It does not
// connect: Run does.
func NewRelay(ob *inbox.Outbox, cfg RelayConfig) (*Relay, error) {
	if ob == nil {
		return nil, errors.New("amqp: NewRelay: outbox is nil")
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
	return &Relay{ob: ob, cfg: cfg, log: cfg.Logger.With("component", "outbox-relay")}, nil
}

// Config returns the configuration in force, defaults filled in.
func (r *Relay) Config() RelayConfig { return r.cfg }

// Run publishes until ctx is cancelled, reconnecting with capped
// exponential backoff whenever the connection or the channel ends. Messages
// whose confirm had not come when a channel ended are published again, with
// the same IDs, for downstream inboxes to drop the copies. When ctx is
// cancelled Run records the batch in hand (within ShutdownTimeout), closes
// the connection and returns nil. It returns an error if the Relay is
// already running or the outbox tables are missing.
func (r *Relay) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("amqp: Relay.Run: already running")
	}
	defer r.running.Store(false)
	if err := r.ob.CheckSchema(ctx); err != nil {
		return err
	}
	unobserve, err := r.ob.ObserveStats()
	if err != nil {
		return err
	}
	defer unobserve()

	bgCtx, stopBg := context.WithCancel(ctx)
	var bg sync.WaitGroup
	defer func() { stopBg(); bg.Wait() }()
	if !r.cfg.DisableListen {
		bg.Go(func() { r.ob.Listen(bgCtx) })
	}
	bg.Go(func() { r.cleanup(bgCtx) })

	retry := backoff.NewExponentialBackOff()
	retry.InitialInterval = r.cfg.ReconnectInitial
	retry.MaxInterval = r.cfg.ReconnectMax
	retry.MaxElapsedTime = 0
	r.log.Info("relay starting", "url", redactURL(r.cfg.URL), "batch_size", r.cfg.BatchSize)
	for gen := uint64(1); ; gen++ {
		started := time.Now()
		healthy, err := r.session(ctx, gen)
		if ctx.Err() != nil {
			r.log.Info("relay stopped")
			return nil
		}
		if healthy || time.Since(started) >= r.cfg.ReconnectMax {
			retry.Reset()
		}
		delay := retry.NextBackOff()
		r.log.Warn("relay broker session ended; reconnecting", "session", gen, "error", err, "retry_in", delay)
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			r.log.Info("relay stopped")
			return nil
		case <-timer.C:
		}
		r.stats.reconnects.Add(1)
	}
}

// cleanup deletes sent messages past their retention, now and then.
func (r *Relay) cleanup(ctx context.Context) {
	ticker := time.NewTicker(r.cfg.CleanupInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		if n, err := r.ob.CleanupSent(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("outbox cleanup failed", "error", err)
		} else if n > 0 {
			r.log.Debug("outbox cleanup", "deleted", n)
		}
	}
}

// relaySession is one connection and channel, used by the goroutine that
// runs Run only.
type relaySession struct {
	r          *Relay
	gen        uint64
	link       *link
	ch         *amqp091.Channel
	connClosed chan *amqp091.Error
	chClosed   chan *amqp091.Error
	returns    chan amqp091.Return
}

// session runs one broker session until it fails or ctx ends. healthy
// reports whether it got any confirm.
func (r *Relay) session(ctx context.Context, gen uint64) (healthy bool, err error) {
	l, err := dial(ctx, r.cfg.URL, r.cfg.AMQP, r.cfg.OpenTimeout)
	if err != nil {
		return false, fmt.Errorf("connect to %s: %w", redactURL(r.cfg.URL), err)
	}
	s := &relaySession{r: r, gen: gen, link: l, connClosed: l.conn.NotifyClose(make(chan *amqp091.Error, 1))}
	defer s.close()
	err = l.bounded(ctx, r.cfg.OpenTimeout, "open channel", func() error {
		ch, err := l.conn.Channel()
		if err != nil {
			return err
		}
		s.ch = ch
		return ch.Confirm(false)
	})
	if err != nil {
		return false, err
	}
	s.chClosed = s.ch.NotifyClose(make(chan *amqp091.Error, 1))
	// Returns come before their confirm; the buffer holds a whole batch's,
	// so amqp091-go never waits on this channel while the batch is read.
	s.returns = s.ch.NotifyReturn(make(chan amqp091.Return, r.cfg.BatchSize))
	r.log.Info("relay publishing", "session", gen)

	failures := 0
	for {
		n, full, err := s.batch(ctx)
		if err != nil {
			return healthy, err
		}
		healthy = healthy || n > 0
		if ctx.Err() != nil {
			return healthy, nil
		}
		if full {
			continue
		}
		wait := r.cfg.PollInterval
		if n < 0 { // the database failed
			failures++
			wait = min(time.Duration(failures)*100*time.Millisecond, r.cfg.ReconnectMax)
		} else {
			failures = 0
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-r.ob.Wakeup():
		case <-timer.C:
		case e := <-s.connClosed:
			timer.Stop()
			return healthy, lost("connection", e)
		case e := <-s.chClosed:
			timer.Stop()
			return healthy, lost("channel", e)
		}
		timer.Stop()
	}
}

func (s *relaySession) close() {
	s.link.close(s.r.cfg.ShutdownTimeout)
	for _, c := range []chan *amqp091.Error{s.connClosed, s.chClosed} {
		drain(c)
	}
	drain(s.returns)
}

// inflight is a published message waiting for its confirm.
type inflight struct {
	msg     *inbox.OutboxMessage
	confirm *amqp091.DeferredConfirmation
}

// batch claims, publishes and settles one batch. n is the number of
// messages claimed (-1 when the database failed), full whether the claim was
// full (more may be waiting). An error means the session is over.
func (s *relaySession) batch(ctx context.Context) (n int, full bool, err error) {
	r := s.r
	limit := r.cfg.BatchSize
	if r.isolate > 0 {
		limit = 1
	}
	claim, err := r.ob.Claim(ctx, limit)
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warn("relay: claim failed; retrying", "error", err, "session", s.gen)
		}
		return -1, false, nil
	}
	defer claim.Release()
	if len(claim.Messages) == 0 {
		return 0, false, nil
	}
	drain(s.returns)
	sent := make([]*inflight, 0, len(claim.Messages))
	var pubErr error
	for i := range claim.Messages {
		m := &claim.Messages[i]
		dc, err := s.ch.PublishWithDeferredConfirmWithContext(context.WithoutCancel(ctx), m.Exchange, m.RoutingKey, true, false, s.publishing(m))
		if err != nil {
			pubErr = fmt.Errorf("publish message %s: %w", m.ID, err)
			break
		}
		sent = append(sent, &inflight{msg: m, confirm: dc})
	}
	r.stats.published.Add(uint64(len(sent)))
	returned, lostErr := s.awaitConfirms(ctx, sent)
	if lostErr == nil {
		lostErr = pubErr
	}
	if lostErr == nil && s.ch.IsClosed() {
		lostErr = errors.New("channel closed")
	}
	var chErr *amqp091.Error
	select {
	case e := <-s.chClosed:
		if e != nil {
			chErr = e
			lostErr = lost("channel", e)
		}
	default:
	}

	var ok []int64
	var failed []inbox.OutboxFailure
	unknown := 0
	for _, f := range sent {
		ret, wasReturned := returned[f.msg.ID]
		switch {
		case wasReturned:
			failed = append(failed, inbox.OutboxFailure{RowID: f.msg.RowID, Dead: true,
				Err: fmt.Errorf("unroutable: the broker returned it (%d %s) from exchange %q with routing key %q",
					ret.ReplyCode, ret.ReplyText, ret.Exchange, ret.RoutingKey)})
			r.stats.returned.Add(1)
		case f.confirm.Acked():
			ok = append(ok, f.msg.RowID)
		case lostErr == nil:
			failed = append(failed, inbox.OutboxFailure{RowID: f.msg.RowID, Err: errors.New("the broker refused it (basic.nack)")})
			r.stats.nacked.Add(1)
		default:
			unknown++
		}
	}
	unknown += len(claim.Messages) - len(sent)
	if lostErr != nil && unknown > 0 {
		if limit == 1 && chErr != nil && chErr.Recover {
			// Alone on the channel, this message is what the broker refused.
			m := &claim.Messages[0]
			failed = append(failed, inbox.OutboxFailure{RowID: m.RowID, Err: fmt.Errorf("the broker closed the channel on it: %w", chErr),
				Dead: chErr.Code == amqp091.AccessRefused || chErr.Code == amqp091.PreconditionFailed})
			unknown--
		} else if limit > 1 && chErr != nil && chErr.Recover {
			r.isolate = unknown
		}
		r.stats.republished.Add(uint64(unknown))
	}
	if r.isolate > 0 && limit == 1 {
		r.isolate--
	}
	if r.beforeSettle != nil {
		r.beforeSettle()
	}
	settleCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.ShutdownTimeout)
	defer cancel()
	if err := claim.Settle(settleCtx, ok, failed); err != nil {
		// The rows stay pending: the broker has them, and the copies that
		// the next claim publishes are dropped downstream by ID.
		r.log.Warn("relay: could not record confirmed messages; they will be published again", "messages", len(ok)+len(failed), "error", err, "session", s.gen)
		if lostErr == nil {
			return -1, false, nil
		}
	} else {
		r.stats.confirmed.Add(uint64(len(ok)))
	}
	if lostErr != nil {
		r.log.Warn("relay: channel lost with confirms outstanding; those messages will be published again",
			"unconfirmed", unknown, "session", s.gen, "error", lostErr)
		return len(claim.Messages), false, lostErr
	}
	return len(claim.Messages), len(claim.Messages) >= limit, nil
}

// awaitConfirms waits for the confirm of every message in sent, collecting
// the returns (which the broker sends before the confirm of the same
// message). A non-nil error means the channel or connection was lost, or the
// confirms did not come in time: the messages not yet confirmed then have
// an unknown fate.
func (s *relaySession) awaitConfirms(ctx context.Context, sent []*inflight) (map[string]amqp091.Return, error) {
	returned := map[string]amqp091.Return{}
	timer := time.NewTimer(s.r.cfg.ConfirmTimeout)
	defer timer.Stop()
	var stop <-chan struct{} = ctx.Done()
	for _, f := range sent {
	wait:
		for {
			select {
			case <-f.confirm.Done():
				break wait
			case ret, ok := <-s.returns:
				s.noteReturn(returned, ret, ok)
			case e := <-s.connClosed:
				s.connClosed <- e // keep it for the session loop
				return returned, lost("connection", e)
			case <-timer.C:
				s.link.cut()
				return returned, fmt.Errorf("no confirm within %s", s.r.cfg.ConfirmTimeout)
			case <-stop:
				// Give the confirms in flight ShutdownTimeout more.
				stop = nil
				timer.Reset(s.r.cfg.ShutdownTimeout)
			}
		}
	}
	for {
		select {
		case ret, ok := <-s.returns:
			if !ok {
				return returned, nil
			}
			s.noteReturn(returned, ret, ok)
		default:
			return returned, nil
		}
	}
}

// noteReturn records a return; amqp091-go closes the returns channel with
// the channel, which then stops being read (a nil channel never receives).
func (s *relaySession) noteReturn(returned map[string]amqp091.Return, ret amqp091.Return, ok bool) {
	if !ok {
		s.returns = nil
		return
	}
	returned[ret.MessageId] = ret
}

// publishing is m as published: the ID as message_id, the type, and the
// stream and sequence in the headers a Receiver reads.
func (s *relaySession) publishing(m *inbox.OutboxMessage) amqp091.Publishing {
	headers := make(amqp091.Table, len(m.Headers)+2)
	for k, v := range m.Headers {
		headers[k] = v
	}
	if m.Stream != "" {
		headers[s.r.cfg.StreamHeader] = m.Stream
		headers[s.r.cfg.SequenceHeader] = m.Seq
	}
	return amqp091.Publishing{
		MessageId:    m.ID,
		Type:         m.Type,
		ContentType:  m.ContentType,
		Headers:      headers,
		Body:         m.Body,
		DeliveryMode: amqp091.Persistent,
		Timestamp:    m.CreatedAt,
	}
}

// RelayStats are the Relay's counters since NewRelay.
type RelayStats struct {
	// Published counts publishes, copies included.
	Published uint64
	// Confirmed counts messages confirmed and marked sent.
	Confirmed uint64
	// Returned counts messages the broker returned as unroutable (dead).
	Returned uint64
	// Nacked counts messages the broker refused with basic.nack (retried).
	Nacked uint64
	// Republished counts messages whose channel was lost before their
	// confirm, left pending to be published again.
	Republished uint64
	// Reconnects counts broker sessions after the first.
	Reconnects uint64
}

// Stats returns a snapshot of the counters. It is safe to call at any time.
func (r *Relay) Stats() RelayStats {
	c := &r.stats
	return RelayStats{
		Published: c.published.Load(), Confirmed: c.confirmed.Load(), Returned: c.returned.Load(),
		Nacked: c.nacked.Load(), Republished: c.republished.Load(), Reconnects: c.reconnects.Load(),
	}
}

type relayCounters struct {
	published, confirmed, returned, nacked, republished, reconnects atomic.Uint64
}
