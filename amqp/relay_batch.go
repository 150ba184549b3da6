package amqp

import (
	"context"
	"errors"
	"fmt"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/inboxkit/inbox"
)

// relayBatch is one claim, published: its row locks keep other claims off
// its messages (and, as none is marked sent yet, off their streams' next
// ones) until it is settled with the confirms.
type relayBatch struct {
	claim *inbox.OutboxClaim
	limit int
	// alone is set while isolating a refused message: nothing else was or
	// will be on the channel before this batch is settled.
	alone bool
	sent  []*inflight
	// pubErr is why publishing stopped before the end of the claim.
	pubErr error
	// streamSent is set when the settle marked a stream's message sent,
	// which makes the stream's next message claimable.
	streamSent bool
}

// full reports whether the claim took all it could: more may be waiting.
func (b *relayBatch) full() bool { return len(b.claim.Messages) >= b.limit }

// inflight is a published message waiting for its confirm.
type inflight struct {
	msg     *inbox.OutboxMessage
	confirm *amqp091.DeferredConfirmation
}

// publish claims the next batch and publishes it. It returns nil when there
// was nothing to claim, and dbFailed when the claim failed.
func (s *relaySession) publish(ctx context.Context) (b *relayBatch, dbFailed bool) {
	r := s.r
	limit, alone := r.cfg.BatchSize, r.isolate > 0
	if alone {
		limit = 1
	}
	claim, err := r.ob.Claim(ctx, limit)
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warn("relay: claim failed; retrying", "error", err, "session", s.gen)
		}
		return nil, true
	}
	if len(claim.Messages) == 0 {
		return nil, false
	}
	s.inFlight++
	b = &relayBatch{claim: claim, limit: limit, alone: alone, sent: make([]*inflight, 0, len(claim.Messages))}
	for i := range claim.Messages {
		m := &claim.Messages[i]
		dc, err := s.ch.PublishWithDeferredConfirmWithContext(context.WithoutCancel(ctx), m.Exchange, m.RoutingKey, true, false, s.publishing(m))
		if err != nil {
			b.pubErr = fmt.Errorf("publish message %s: %w", m.ID, err)
			break
		}
		b.sent = append(b.sent, &inflight{msg: m, confirm: dc})
	}
	r.stats.published.Add(uint64(len(b.sent)))
	return b, false
}

// finish waits for b's confirms and settles its claim with them: confirmed
// messages sent, returned ones dead, nacked ones retried, the others left
// pending to be published again. It reports whether the settle was
// recorded; a lost channel or connection is left in s.lost.
func (s *relaySession) finish(ctx context.Context, b *relayBatch) (recorded bool) {
	r := s.r
	defer func() { s.inFlight-- }()
	if s.lost == nil {
		s.lost = s.awaitConfirms(ctx, b.sent)
	}
	s.collectReturns()
	if s.lost == nil {
		s.lost = b.pubErr
	}
	if s.lost == nil && s.ch.IsClosed() {
		s.lost = errors.New("channel closed")
	}
	select {
	case e := <-s.chClosed:
		if e != nil {
			s.chErr = e
			s.lost = lost("channel", e)
		}
	default:
	}

	var ok []int64
	var failed []inbox.OutboxFailure
	streamSent := false
	unknown := len(b.claim.Messages) - len(b.sent)
	for _, f := range b.sent {
		ret, wasReturned := s.returned[f.msg.ID]
		delete(s.returned, f.msg.ID)
		switch {
		case wasReturned:
			failed = append(failed, inbox.OutboxFailure{RowID: f.msg.RowID, Dead: true,
				Err: fmt.Errorf("unroutable: the broker returned it (%d %s) from exchange %q with routing key %q",
					ret.ReplyCode, ret.ReplyText, ret.Exchange, ret.RoutingKey)})
			r.stats.returned.Add(1)
		case f.confirm.Acked():
			ok = append(ok, f.msg.RowID)
			streamSent = streamSent || f.msg.Stream != ""
		case s.lost == nil:
			failed = append(failed, inbox.OutboxFailure{RowID: f.msg.RowID, Err: errors.New("the broker refused it (basic.nack)")})
			r.stats.nacked.Add(1)
		default:
			unknown++
		}
	}
	if s.lost != nil && unknown > 0 {
		refused := s.chErr != nil && s.chErr.Recover
		switch {
		case refused && b.alone:
			// Alone on the channel, this message is what the broker refused.
			m := &b.claim.Messages[0]
			failed = append(failed, inbox.OutboxFailure{RowID: m.RowID, Err: fmt.Errorf("the broker closed the channel on it: %w", s.chErr),
				Dead: s.chErr.Code == amqp091.AccessRefused || s.chErr.Code == amqp091.PreconditionFailed})
			unknown--
		case refused:
			// Any of them may be the one: the next session publishes
			// them one at a time to find it.
			r.isolate += unknown
		}
		r.stats.republished.Add(uint64(unknown))
	}
	if b.alone && r.isolate > 0 {
		r.isolate--
	}
	if r.beforeSettle != nil {
		r.beforeSettle(s.inFlight)
	}
	settleCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.ShutdownTimeout)
	defer cancel()
	if err := b.claim.Settle(settleCtx, ok, failed); err != nil {
		// The rows stay pending: the broker has them, and the copies that
		// the next claim publishes are dropped downstream by ID.
		r.log.Warn("relay: could not record confirmed messages; they will be published again", "messages", len(ok)+len(failed), "error", err, "session", s.gen)
		return false
	}
	r.stats.confirmed.Add(uint64(len(ok)))
	b.streamSent = streamSent
	if s.lost != nil && unknown > 0 {
		r.log.Warn("relay: channel lost with confirms outstanding; those messages will be published again",
			"unconfirmed", unknown, "session", s.gen, "error", s.lost)
	}
	return true
}

// awaitConfirms waits for the confirm of every message in sent, reading the
// returns meanwhile. A non-nil error means the connection was lost, or the
// confirms did not come in time: the messages not yet confirmed then have
// an unknown fate.
func (s *relaySession) awaitConfirms(ctx context.Context, sent []*inflight) error {
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
				s.noteReturn(ret, ok)
			case e := <-s.connClosed:
				// Not put back: amqp091-go closes this channel after
				// sending. The session ends on the error returned.
				return lost("connection", e)
			case <-timer.C:
				s.link.cut()
				return fmt.Errorf("no confirm within %s", s.r.cfg.ConfirmTimeout)
			case <-stop:
				// Give the confirms in flight ShutdownTimeout more.
				stop = nil
				timer.Reset(s.r.cfg.ShutdownTimeout)
			}
		}
	}
	return nil
}

// collectReturns reads the returns already delivered. amqp091-go delivers a
// return before it records the confirm of the same message, so once a
// message's confirm is done, its return, if any, is read here.
func (s *relaySession) collectReturns() {
	for {
		select {
		case ret, ok := <-s.returns:
			s.noteReturn(ret, ok)
			if !ok {
				return
			}
		default:
			return
		}
	}
}

// noteReturn records a return; amqp091-go closes the returns channel with
// the channel, which then stops being read (a nil channel never receives).
func (s *relaySession) noteReturn(ret amqp091.Return, ok bool) {
	if !ok {
		s.returns = nil
		return
	}
	s.returned[ret.MessageId] = ret
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
