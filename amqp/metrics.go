package amqp

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/inboxkit/inbox"
)

// Names of the receiver's metric instruments. They are reported on
// Config.MeterProvider under the inbox's instrumentation scope
// (inbox.InstrumentationName), beside the inbox's own, and carry the
// attribute inbox.AttrSource (the Config.Source of the stored messages).
const (
	// MetricReceived counts deliveries taken from the broker, valid or not,
	// redeliveries included.
	MetricReceived = "inbox.messages.received"
	// MetricMalformed counts deliveries refused and dead-lettered (no ID,
	// bad sequence, too large...), with the reason in inbox.AttrReason.
	MetricMalformed = "inbox.messages.malformed"
)

// Metrics counts what a receiver takes from its broker, under the
// instrument names MetricReceived and MetricMalformed. A Receiver keeps its
// own; a receiver of your own (for another broker) may use one too, so that
// every receiver reports alike. A nil *Metrics counts nothing. Its methods
// are safe for concurrent use.
type Metrics struct {
	received, malformed metric.Int64Counter
	attrs               attribute.Set
	source              string
	reasons             sync.Map // reason -> attribute.Set
}

// NewMetrics returns the counters of a receiver that stores messages of
// source (the queue name, usually) on mp, or on the global MeterProvider
// when mp is nil.
func NewMetrics(mp metric.MeterProvider, source string) (*Metrics, error) {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter(inbox.InstrumentationName)
	received, err1 := meter.Int64Counter(MetricReceived,
		metric.WithDescription("Deliveries taken from the broker, valid or not."), metric.WithUnit("{message}"))
	malformed, err2 := meter.Int64Counter(MetricMalformed,
		metric.WithDescription("Deliveries refused as malformed, by reason."), metric.WithUnit("{message}"))
	m := &Metrics{
		received:  received,
		malformed: malformed,
		attrs:     attribute.NewSet(attribute.String(inbox.AttrSource, source)),
		source:    source,
	}
	if err := errors.Join(err1, err2); err != nil {
		return m, fmt.Errorf("amqp: receiver metrics: %w", err)
	}
	return m, nil
}

// Received counts n deliveries taken from the broker.
func (m *Metrics) Received(ctx context.Context, n int) {
	if m == nil || n <= 0 {
		return
	}
	m.received.Add(ctx, int64(n), metric.WithAttributeSet(m.attrs))
}

// Malformed counts one delivery refused for reason (a short, fixed text
// such as one of the inbox.Reason constants: it becomes an attribute).
func (m *Metrics) Malformed(ctx context.Context, reason string) {
	if m == nil {
		return
	}
	v, ok := m.reasons.Load(reason)
	if !ok {
		v, _ = m.reasons.LoadOrStore(reason, attribute.NewSet(attribute.String(inbox.AttrSource, m.source), attribute.String(inbox.AttrReason, reason)))
	}
	m.malformed.Add(ctx, 1, metric.WithAttributeSet(v.(attribute.Set)))
}
