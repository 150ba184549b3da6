package inbox

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Telemetry. The inbox reports through the OpenTelemetry API only: it
// records into the MeterProvider and TracerProvider of its Config (the
// global ones by default, which do nothing until the application installs
// an SDK), and never starts an exporter itself.

// InstrumentationName is the name of the inbox's Meter and Tracer, which
// is also the instrumentation scope of everything it reports.
const InstrumentationName = "github.com/inboxkit/inbox"

// Names of the inbox's metric instruments. Counters are per topic
// (attribute AttrTopic) and per schema (AttrSchema). The receiver's counters
// (package amqp's MetricReceived and MetricMalformed) carry AttrSource
// instead, and AttrReason.
const (
	// MetricStored counts messages stored by Store and StoreTx (for
	// StoreTx: when it returns, before the caller commits).
	MetricStored = "inbox.messages.stored"
	// MetricDuplicates counts messages Store found already stored, or below
	// their stream's watermark, and did not store again.
	MetricDuplicates = "inbox.messages.duplicates"
	// MetricProcessed counts messages whose handler committed.
	MetricProcessed = "inbox.messages.processed"
	// MetricRetried counts failed attempts that will be retried.
	MetricRetried = "inbox.messages.retried"
	// MetricDead counts messages that went dead.
	MetricDead = "inbox.messages.dead"
	// MetricHandlerDuration is the histogram of handler run times, in
	// seconds, with AttrOutcome "ok" or "error".
	MetricHandlerDuration = "inbox.handler.duration"
	// MetricLatency is the histogram of end-to-end latency, in seconds: from
	// the message's storing (received_at) to the commit of its handler.
	// Both ends are read on the database's clock, so clock skew between
	// hosts does not distort it.
	MetricLatency = "inbox.message.latency"
	// MetricBacklog is the observable gauge of pending messages per topic
	// (due now or scheduled for a retry), counted up to StatsCountLimit.
	MetricBacklog = "inbox.backlog"
	// MetricUnhandledBacklog is the observable gauge of pending messages per
	// topic that this Inbox has no handler for (see Stats.UnhandledPending);
	// topics it handles are not reported. Above zero for long, it means
	// messages no process will handle (see Config.StrictTopics).
	MetricUnhandledBacklog = "inbox.backlog.unhandled"
	// MetricOldestPendingAge is the observable gauge of the age, in seconds,
	// of each topic's oldest pending message.
	MetricOldestPendingAge = "inbox.oldest_pending.age"
	// MetricStreamsParked and MetricStreamsGap are observable gauges of the
	// streams parked, and of those (not parked) waiting for a missing
	// sequence number.
	MetricStreamsParked = "inbox.streams.parked"
	MetricStreamsGap    = "inbox.streams.gap"
	// MetricStreamsMaxLag is the observable gauge of how long, in seconds,
	// the longest-waiting due message of any stream has been due (see
	// StreamStats.MaxLag).
	MetricStreamsMaxLag = "inbox.streams.max_lag"
)

// Attribute keys of the inbox's metrics and spans.
const (
	AttrSchema  = "inbox.schema"
	AttrTopic   = "inbox.topic"
	AttrSource  = "inbox.source"
	AttrOutcome = "inbox.outcome"
	AttrReason  = "inbox.reason"
	// Span attributes only.
	AttrMessageID = "messaging.message.id"
	AttrRowID     = "inbox.row_id"
	AttrAttempt   = "inbox.attempt"
	AttrStream    = "inbox.stream"
	AttrSeq       = "inbox.seq"
	AttrBatchSize = "messaging.batch.message_count"
)

// Trace context headers: Store and the workers read a W3C trace context
// from these keys of Message.Headers. A receiver stores them as the
// publisher sent them.
const (
	HeaderTraceParent = "traceparent"
	HeaderTraceState  = "tracestate"
)

// maxTopicAttrs bounds the distinct topic attributes the inbox reports.
// Topics come from publishers; past this many, further topics are reported
// as otherTopic so that a misbehaving publisher cannot blow up the number of
// time series.
const (
	maxTopicAttrs = 512
	otherTopic    = "_other"
)

// Advisory histogram bucket boundaries, in seconds.
var (
	handlerBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}
	latencyBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600}
)

// traceContext reads the W3C trace context; it is the format receivers
// store, whatever global propagator the application installed.
var traceContext = propagation.TraceContext{}

// telemetry holds an Inbox's instruments. Its methods are safe for
// concurrent use.
type telemetry struct {
	schema string
	log    logger
	meter  metric.Meter
	tracer trace.Tracer

	stored, duplicates, processed, retried, dead metric.Int64Counter
	handlerDuration, latency                     metric.Float64Histogram
	backlog, unhandled, parked, gap              metric.Int64ObservableGauge
	oldestAge, maxLag                            metric.Float64ObservableGauge
	schemaAttrs                                  attribute.Set

	topicsMu sync.RWMutex
	topics   map[string]attribute.Set // per topic: schema and topic
	outcomes sync.Map                 // attrKey -> attribute.Set with an outcome
}

type outcomeKey struct{ topic, outcome string }

func newTelemetry(cfg Config, log logger) *telemetry {
	mp, tp := cfg.MeterProvider, cfg.TracerProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	t := &telemetry{
		schema: cfg.Schema,
		log:    log,
		meter:  mp.Meter(InstrumentationName),
		tracer: tp.Tracer(InstrumentationName),
		topics: map[string]attribute.Set{},
	}
	// The API returns a working (if possibly no-op) instrument along with
	// any error, so a bad SDK configuration costs metrics, not the inbox.
	var errs []error
	counter := func(name, desc string) metric.Int64Counter {
		c, err := t.meter.Int64Counter(name, metric.WithDescription(desc), metric.WithUnit("{message}"))
		errs = append(errs, err)
		return c
	}
	t.stored = counter(MetricStored, "Messages stored in the inbox.")
	t.duplicates = counter(MetricDuplicates, "Messages not stored because they were already stored or applied.")
	t.processed = counter(MetricProcessed, "Messages whose handler committed.")
	t.retried = counter(MetricRetried, "Failed handler attempts that will be retried.")
	t.dead = counter(MetricDead, "Messages given up on (dead).")
	var err error
	t.handlerDuration, err = t.meter.Float64Histogram(MetricHandlerDuration,
		metric.WithDescription("Duration of handler runs."), metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(handlerBuckets...))
	errs = append(errs, err)
	t.latency, err = t.meter.Float64Histogram(MetricLatency,
		metric.WithDescription("Time from storing a message to the commit of its handler."), metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(latencyBuckets...))
	errs = append(errs, err)
	t.backlog, err = t.meter.Int64ObservableGauge(MetricBacklog,
		metric.WithDescription("Pending messages per topic (due now or scheduled for a retry)."), metric.WithUnit("{message}"))
	errs = append(errs, err)
	t.unhandled, err = t.meter.Int64ObservableGauge(MetricUnhandledBacklog,
		metric.WithDescription("Pending messages per topic that this inbox has no handler for."), metric.WithUnit("{message}"))
	errs = append(errs, err)
	t.oldestAge, err = t.meter.Float64ObservableGauge(MetricOldestPendingAge,
		metric.WithDescription("Age of the oldest pending message per topic."), metric.WithUnit("s"))
	errs = append(errs, err)
	t.parked, err = t.meter.Int64ObservableGauge(MetricStreamsParked,
		metric.WithDescription("Parked streams."), metric.WithUnit("{stream}"))
	errs = append(errs, err)
	t.gap, err = t.meter.Int64ObservableGauge(MetricStreamsGap,
		metric.WithDescription("Streams waiting for a missing sequence number."), metric.WithUnit("{stream}"))
	errs = append(errs, err)
	t.maxLag, err = t.meter.Float64ObservableGauge(MetricStreamsMaxLag,
		metric.WithDescription("How long the longest-waiting due message of any stream has been due."), metric.WithUnit("s"))
	errs = append(errs, err)
	t.schemaAttrs = attribute.NewSet(attribute.String(AttrSchema, cfg.Schema))
	if err := errors.Join(errs...); err != nil {
		log.warn("inbox: some metric instruments could not be created; they report nothing", "error", err)
	}
	return t
}

// topicAttrs returns the attribute set of topic, shared by all its
// measurements.
func (t *telemetry) topicAttrs(topic string) attribute.Set {
	t.topicsMu.RLock()
	set, ok := t.topics[topic]
	t.topicsMu.RUnlock()
	if ok {
		return set
	}
	t.topicsMu.Lock()
	defer t.topicsMu.Unlock()
	if set, ok := t.topics[topic]; ok {
		return set
	}
	name := topic
	if len(t.topics) >= maxTopicAttrs {
		name = otherTopic
	}
	set = attribute.NewSet(attribute.String(AttrSchema, t.schema), attribute.String(AttrTopic, name))
	if name == topic {
		t.topics[topic] = set
	}
	return set
}

func (t *telemetry) outcomeAttrs(topic, outcome string) attribute.Set {
	k := outcomeKey{topic, outcome}
	if v, ok := t.outcomes.Load(k); ok {
		return v.(attribute.Set)
	}
	base := t.topicAttrs(topic)
	kvs := append(base.ToSlice(), attribute.String(AttrOutcome, outcome))
	set := attribute.NewSet(kvs...)
	if v, _ := base.Value(AttrTopic); v.AsString() == topic {
		t.outcomes.Store(k, set)
	}
	return set
}

func (t *telemetry) add(ctx context.Context, c metric.Int64Counter, topic string, n int64) {
	if n > 0 {
		c.Add(ctx, n, metric.WithAttributeSet(t.topicAttrs(topic)))
	}
}

// startStore starts the span of one Store call. Its parent is the span in
// ctx; without one, and when every message of the batch that carries a
// trace context carries the same one (a single message, typically), that
// context is the parent, so the delivery's trace goes on into the inbox.
// Every message's trace context is also linked.
func (t *telemetry) startStore(ctx context.Context, msgs []Message) (context.Context, trace.Span) {
	var links []trace.Link
	var parent trace.SpanContext
	shared := true
	for i := range msgs {
		sc := remoteSpanContext(msgs[i].Headers)
		if !sc.IsValid() {
			continue
		}
		if len(links) < maxSpanLinks {
			links = append(links, trace.Link{SpanContext: sc})
		}
		switch {
		case !parent.IsValid():
			parent = sc
		case !parent.Equal(sc):
			shared = false
		}
	}
	if !trace.SpanContextFromContext(ctx).IsValid() && parent.IsValid() && shared {
		ctx = trace.ContextWithRemoteSpanContext(ctx, parent)
	}
	return t.tracer.Start(ctx, "inbox store",
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithLinks(links...),
		trace.WithAttributes(
			attribute.String(AttrSchema, t.schema),
			attribute.Int(AttrBatchSize, len(msgs))))
}

// maxSpanLinks bounds the links of a store span; SDKs drop links past
// their own limit (128 by default) anyway.
const maxSpanLinks = 128

// endStore counts a Store's outcome and ends its span.
func (t *telemetry) endStore(ctx context.Context, span trace.Span, msgs []Message, res StoreResult, err error) {
	defer span.End()
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, firstLine(err))
		return
	}
	span.SetAttributes(attribute.Int("inbox.stored", res.Stored), attribute.Int("inbox.duplicates", res.Duplicates))
	if len(msgs) == 1 {
		t.add(ctx, t.stored, msgs[0].Topic, int64(res.Stored))
		t.add(ctx, t.duplicates, msgs[0].Topic, int64(res.Duplicates))
		t.add(ctx, t.dead, msgs[0].Topic, int64(res.Dead))
		return
	}
	type counts struct{ stored, dups, dead int64 }
	byTopic := map[string]*counts{}
	for i := range msgs {
		c := byTopic[msgs[i].Topic]
		if c == nil {
			c = &counts{}
			byTopic[msgs[i].Topic] = c
		}
		if i < len(res.New) && res.New[i] {
			c.stored++
		} else {
			c.dups++
		}
		if i < len(res.Late) && res.Late[i] {
			c.dead++ // stored dead: arrived after its sequence was skipped
		}
	}
	for topic, c := range byTopic {
		t.add(ctx, t.stored, topic, c.stored)
		t.add(ctx, t.duplicates, topic, c.dups)
		t.add(ctx, t.dead, topic, c.dead)
	}
}

// remoteSpanContext reads the W3C trace context stored in headers.
func remoteSpanContext(headers map[string]string) trace.SpanContext {
	if headers[HeaderTraceParent] == "" {
		return trace.SpanContext{}
	}
	ctx := traceContext.Extract(context.Background(), propagation.MapCarrier(headers))
	return trace.SpanContextFromContext(ctx)
}

// startHandler starts the span around one handler run. Its parent is the
// trace context stored with the message, so the handler joins the trace of
// the delivery (and of its publisher); without one it is a root span.
func (t *telemetry) startHandler(ctx context.Context, m *Message) (context.Context, trace.Span) {
	opts := []trace.SpanStartOption{
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String(AttrSchema, t.schema),
			attribute.String(AttrTopic, m.Topic),
			attribute.String(AttrMessageID, m.ID),
			attribute.String(AttrSource, m.Source),
			attribute.Int64(AttrRowID, m.RowID),
			attribute.Int(AttrAttempt, m.Attempt)),
	}
	if m.Stream != "" {
		opts = append(opts, trace.WithAttributes(attribute.String(AttrStream, m.Stream), attribute.Int64(AttrSeq, m.Seq)))
	}
	if sc := remoteSpanContext(m.Headers); sc.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, sc)
	} else {
		// The worker's context carries no span of its own; make sure of it.
		opts = append(opts, trace.WithNewRoot())
	}
	return t.tracer.Start(ctx, "inbox handle "+m.Topic, opts...)
}

// endHandler records a handler run's duration and ends its span.
func (t *telemetry) endHandler(ctx context.Context, span trace.Span, m *Message, herr error, took time.Duration) {
	outcome := "ok"
	if herr != nil {
		outcome = "error"
		span.RecordError(herr)
		span.SetStatus(codes.Error, firstLine(herr))
	}
	span.End()
	t.handlerDuration.Record(ctx, took.Seconds(), metric.WithAttributeSet(t.outcomeAttrs(m.Topic, outcome)))
}

// committed counts the outcomes of a batch after its commit. dbNow is the
// database's clock at claim time and claimed the local monotonic time of
// the same moment, so now on the database's clock is dbNow+time.Since(claimed).
func (t *telemetry) committed(res *results, dbNow, claimed time.Time) {
	ctx := context.Background()
	var doneAt time.Time
	if !dbNow.IsZero() {
		doneAt = dbNow.Add(time.Since(claimed))
	}
	for _, m := range res.done {
		attrs := metric.WithAttributeSet(t.topicAttrs(m.Topic))
		t.processed.Add(ctx, 1, attrs)
		if !doneAt.IsZero() && !m.ReceivedAt.IsZero() {
			t.latency.Record(ctx, max(doneAt.Sub(m.ReceivedAt), 0).Seconds(), attrs)
		}
	}
	for _, f := range res.failed {
		if f.dead {
			t.add(ctx, t.dead, f.msg.Topic, 1)
		} else {
			t.add(ctx, t.retried, f.msg.Topic, 1)
		}
	}
	for _, l := range res.late {
		t.add(ctx, t.dead, l.msg.Topic, 1)
	}
}

// brokenAttempt counts an attempt recorded after its transaction broke.
func (t *telemetry) brokenAttempt(m *Message) {
	t.add(context.Background(), t.retried, m.Topic, 1)
}

// observeBacklog registers the callback of the observable gauges, which
// reads them in one transaction per collection. The returned function unregisters it.
func (t *telemetry) observeBacklog(in *Inbox) (func(), error) {
	reg, err := t.meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		ctx, cancel := context.WithTimeout(ctx, gaugeQueryTimeout)
		defer cancel()
		g, err := in.gauges(ctx)
		if err != nil {
			return fmt.Errorf("inbox: observe backlog of schema %s: %w", t.schema, err)
		}
		for _, p := range g.topics {
			attrs := metric.WithAttributeSet(t.topicAttrs(p.Topic))
			o.ObserveInt64(t.backlog, p.Pending(), attrs)
			o.ObserveFloat64(t.oldestAge, p.OldestPending.Seconds(), attrs)
			if in.handler(p.Topic) == nil {
				o.ObserveInt64(t.unhandled, p.Pending(), attrs)
			}
		}
		attrs := metric.WithAttributeSet(t.schemaAttrs)
		o.ObserveInt64(t.parked, g.parked, attrs)
		o.ObserveInt64(t.gap, g.gap, attrs)
		o.ObserveFloat64(t.maxLag, g.maxLag.Seconds(), attrs)
		return nil
	}, t.backlog, t.unhandled, t.oldestAge, t.parked, t.gap, t.maxLag)
	if err != nil {
		return nil, fmt.Errorf("inbox: register backlog gauges: %w", err)
	}
	return func() {
		if err := reg.Unregister(); err != nil {
			t.log.warn("inbox: unregister backlog gauges", "error", err)
		}
	}, nil
}

// gaugeQueryTimeout bounds the backlog query of one collection, so a slow
// database cannot stall the application's metrics pipeline.
const gaugeQueryTimeout = 5 * time.Second
