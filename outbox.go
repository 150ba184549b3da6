package inbox

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Outbox stores outgoing messages in the caller's transaction, so that a
// message is published if and only if the transaction that produced it
// commits. A relay (package amqp's Relay) publishes the committed rows.
// Create it with NewOutbox; it is safe for concurrent use.
type Outbox struct {
	pool *pgxpool.Pool
	cfg  OutboxConfig
	log  logger
	sql  outboxQueries
	wake *wakeup
	tel  *outboxTelemetry
}

// Rejection reasons of an InvalidMessageError from Enqueue, besides the
// Reason constants it shares with Store.
const (
	ReasonMissingRoute       = "missing destination"
	ReasonUnknownDestination = "unknown destination"
	ReasonAmbiguousRoute     = "destination and exchange or routing key both set"
	ReasonFieldTooLong       = "field too long"
	ReasonHeadersTooLarge    = "headers too large"
	ReasonRepeatedID         = "message id repeated in the batch"
)

// NewOutbox returns an Outbox on pool. The schema must be migrated.
func NewOutbox(pool *pgxpool.Pool, cfg OutboxConfig) (*Outbox, error) {
	if pool == nil {
		return nil, errors.New("inbox: NewOutbox: pool is nil")
	}
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	log := logger{cfg.Logger.With("component", "outbox", "schema", cfg.Schema)}
	return &Outbox{
		pool: pool,
		cfg:  cfg,
		log:  log,
		sql:  newOutboxQueries(cfg.Schema),
		wake: newWakeup(),
		tel:  newOutboxTelemetry(cfg, log),
	}, nil
}

// Config returns the configuration in force, defaults filled in.
func (o *Outbox) Config() OutboxConfig { return o.cfg }

// OutgoingMessage is a message to publish after the enqueuing transaction
// commits.
type OutgoingMessage struct {
	// ID is the message's identity, published as the AMQP message_id: the
	// key by which a downstream inbox drops copies. Leave it empty inside a
	// handler to have it derived from the incoming message and the
	// enqueue's position in the handler run, so a retried handler produces
	// the same IDs; elsewhere an empty ID gets a random one, stored with the
	// row (give your own to make a retried service transaction idempotent).
	ID string
	// Destination is a name from OutboxConfig.Destinations. Set it, or
	// Exchange and RoutingKey, not both.
	Destination string
	// Exchange and RoutingKey route the message ("" is the default
	// exchange, which routes to the queue named by the routing key).
	Exchange   string
	RoutingKey string
	// Type is published as the AMQP type property: the topic a downstream
	// inbox selects its handler by.
	Type string
	// ContentType is published as the AMQP content_type property.
	ContentType string
	// Stream, when set, orders the message: the outbox numbers the stream's
	// messages 1, 2, 3... in commit order, publishes each only after the
	// previous one is confirmed, and sends the stream and sequence in the
	// headers a downstream receiver reads by default.
	Stream string
	// Headers are published as AMQP headers (string values). A W3C trace
	// context of the enqueuing span is added as "traceparent" unless set.
	Headers map[string]string
	// Body is the payload, up to OutboxConfig.MaxBodyBytes.
	Body []byte
}

// EnqueueResult tells what Enqueue did with each message, in order.
type EnqueueResult struct {
	// IDs are the messages' IDs, given or assigned.
	IDs []string
	// Seqs are the sequence numbers assigned in their streams (0 without a
	// stream, or for a duplicate).
	Seqs []int64
	// New[i] is false when the i-th ID was already in the outbox: that
	// message is not enqueued again.
	New []bool
	// Enqueued and Duplicates count the two outcomes.
	Enqueued, Duplicates int
}

// Enqueue adds msgs to the outbox in tx: they are published only if tx
// commits, and stream sequence numbers are taken in tx, so they follow
// commit order with no gap from a rollback. Inside a Handler pass the
// handler's tx and ctx. A batch with an invalid message enqueues nothing and
// returns an *InvalidMessageError.
func (o *Outbox) Enqueue(ctx context.Context, tx pgx.Tx, msgs ...OutgoingMessage) (EnqueueResult, error) {
	if tx == nil {
		return EnqueueResult{}, errors.New("inbox: Enqueue: tx is nil")
	}
	res, err := o.enqueue(ctx, tx, msgs)
	if err == nil && res.Enqueued > 0 {
		// Early is harmless: a relay that finds nothing yet waits again, and
		// the NOTIFY sent at commit wakes it.
		o.wake.signal()
	}
	return res, err
}

// Send enqueues msgs in a transaction of its own and commits it, for code
// that has no transaction to join.
func (o *Outbox) Send(ctx context.Context, msgs ...OutgoingMessage) (EnqueueResult, error) {
	var res EnqueueResult
	err := pgx.BeginFunc(ctx, o.pool, func(tx pgx.Tx) error {
		var err error
		res, err = o.enqueue(ctx, tx, msgs)
		return err
	})
	if err != nil {
		return EnqueueResult{}, err
	}
	if res.Enqueued > 0 {
		o.wake.signal()
	}
	return res, nil
}

func (o *Outbox) enqueue(ctx context.Context, tx pgx.Tx, msgs []OutgoingMessage) (EnqueueResult, error) {
	n := len(msgs)
	res := EnqueueResult{IDs: make([]string, n), Seqs: make([]int64, n), New: make([]bool, n)}
	if n == 0 {
		return res, nil
	}
	run := handlerRunFrom(ctx)
	trace := traceHeaders(ctx)
	ids, dests, exchanges, keys := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	types, ctypes, streams, headers := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	bodies := make([][]byte, n)
	seen := make(map[string]bool, n)
	for i := range msgs {
		m := msgs[i] // a copy: the caller's message is not changed
		if m.ID == "" {
			m.ID = run.nextID()
		}
		route, err := o.check(i, &m)
		if err != nil {
			return EnqueueResult{}, err
		}
		if seen[m.ID] {
			return EnqueueResult{}, &InvalidMessageError{Index: i, ID: m.ID, Reason: ReasonRepeatedID}
		}
		seen[m.ID] = true
		h := m.Headers
		if len(trace) > 0 && h[HeaderTraceParent] == "" {
			h = make(map[string]string, len(m.Headers)+len(trace))
			for k, v := range m.Headers {
				h[k] = v
			}
			for k, v := range trace {
				h[k] = v
			}
		}
		enc := encodeHeaders(h)
		ids[i], dests[i], exchanges[i], keys[i] = m.ID, m.Destination, route.Exchange, route.RoutingKey
		types[i], ctypes[i], streams[i], headers[i], bodies[i] = m.Type, m.ContentType, m.Stream, enc, m.Body
		if bodies[i] == nil {
			bodies[i] = []byte{}
		}
		res.IDs[i] = m.ID
	}
	sql := o.sql.enqueueUnordered
	if slices.ContainsFunc(streams, func(s string) bool { return s != "" }) {
		sql = o.sql.enqueue
	}
	seqs := map[string]int64{}
	var id string
	var seq int64
	args := []any{ids, dests, exchanges, keys, types, ctypes, streams, headers, bodies, o.notifyChannel()}
	if err := queryGeneric(ctx, tx, sql, args, []any{&id, &seq}, func() error { seqs[id] = seq; return nil }); err != nil {
		return EnqueueResult{}, fmt.Errorf("inbox: enqueue %d outgoing messages: %w", n, err)
	}
	for i, id := range res.IDs {
		if s, ok := seqs[id]; ok {
			res.New[i], res.Seqs[i] = true, s
			res.Enqueued++
		} else {
			res.Duplicates++
		}
	}
	o.tel.enqueued(ctx, res.Enqueued)
	return res, nil
}

// check validates m and resolves its route.
func (o *Outbox) check(i int, m *OutgoingMessage) (Route, error) {
	bad := func(reason, detail string) (Route, error) {
		return Route{}, &InvalidMessageError{Index: i, ID: m.ID, Reason: reason, Detail: detail}
	}
	route := Route{Exchange: m.Exchange, RoutingKey: m.RoutingKey}
	switch {
	case m.Destination != "" && (m.Exchange != "" || m.RoutingKey != ""):
		return bad(ReasonAmbiguousRoute, "")
	case m.Destination != "":
		r, ok := o.cfg.Destinations[m.Destination]
		if !ok {
			return bad(ReasonUnknownDestination, fmt.Sprintf("%q is not in OutboxConfig.Destinations", truncateText(m.Destination, 64)))
		}
		route = r
	case m.Exchange == "" && m.RoutingKey == "":
		return bad(ReasonMissingRoute, "set Destination, or Exchange and RoutingKey")
	}
	if len(m.ID) > MaxIDBytes {
		return bad(ReasonIDTooLong, fmt.Sprintf("%d bytes, limit %d", len(m.ID), MaxIDBytes))
	}
	if len(m.Stream) > MaxStreamBytes {
		return bad(ReasonStreamTooLong, fmt.Sprintf("%d bytes, limit %d", len(m.Stream), MaxStreamBytes))
	}
	if len(m.Body) > o.cfg.MaxBodyBytes {
		return bad(ReasonBodyTooLarge, fmt.Sprintf("%d bytes, limit %d", len(m.Body), o.cfg.MaxBodyBytes))
	}
	fields := []struct{ name, v string }{
		{"id", m.ID}, {"stream", m.Stream}, {"type", m.Type}, {"content type", m.ContentType},
		{"exchange", route.Exchange}, {"routing key", route.RoutingKey},
	}
	for j, f := range fields {
		if j >= 2 && len(f.v) > MaxShortStringBytes {
			return bad(ReasonFieldTooLong, fmt.Sprintf("%s of %d bytes, limit %d", f.name, len(f.v), MaxShortStringBytes))
		}
		if !validText(f.v) {
			return bad(ReasonInvalidText, f.name+" must be UTF-8 without NUL bytes")
		}
	}
	size := 0
	for k, v := range m.Headers {
		if !validText(k) || !validText(v) {
			return bad(ReasonInvalidText, "headers must be UTF-8 without NUL bytes")
		}
		size += len(k) + len(v)
	}
	if size > o.cfg.MaxHeaderBytes {
		return bad(ReasonHeadersTooLarge, fmt.Sprintf("%d bytes, limit %d", size, o.cfg.MaxHeaderBytes))
	}
	return route, nil
}

func truncateText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}

// notifyChannel is the LISTEN/NOTIFY channel of relays on this schema, or ""
// when NOTIFY is off.
func (o *Outbox) notifyChannel() string {
	if o.cfg.DisableListen {
		return ""
	}
	return OutboxNotifyChannel(o.cfg.Schema)
}

// OutboxNotifyChannel is the LISTEN/NOTIFY channel on which Enqueue
// announces new messages of schema at commit.
func OutboxNotifyChannel(schema string) string { return channelName("outbox_", schema) }
