package inbox

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Telemetry. The inbox reports through the OpenTelemetry API only: it
// records into the MeterProvider and TracerProvider of its Config (the
// global ones by default, which do nothing until the application installs
// an SDK), and never starts an exporter itself.

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

// telemetry holds an Inbox's instruments. Its methods are safe for
// concurrent use.
type telemetry struct {
	schema string
	log    logger
	meter  metric.Meter
	tracer trace.Tracer

	stored, duplicates, processed, retried, dead metric.Int64Counter
	handlerDuration, latency                     metric.Float64Histogram
	backlog, unhandled, parked, inGap            metric.Int64ObservableGauge
	oldestAge, maxLag                            metric.Float64ObservableGauge
	schemaAttrs                                  attribute.Set

	topicsMu  sync.RWMutex
	topics    map[string]attribute.Set // per topic: schema and topic
	byOutcome sync.Map                 // outcomeKey -> attribute.Set with an outcome
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
	ins := &instruments{meter: t.meter}
	t.stored = ins.counter(MetricStored, "Messages stored in the inbox.")
	t.duplicates = ins.counter(MetricDuplicates, "Messages not stored because they were already stored or applied.")
	t.processed = ins.counter(MetricProcessed, "Messages whose handler committed.")
	t.retried = ins.counter(MetricRetried, "Failed handler attempts that will be retried.")
	t.dead = ins.counter(MetricDead, "Messages given up on (dead).")
	t.handlerDuration = ins.histogram(MetricHandlerDuration, "Duration of handler runs.", handlerBuckets)
	t.latency = ins.histogram(MetricLatency, "Time from storing a message to the commit of its handler.", latencyBuckets)
	t.backlog = ins.intGauge(MetricBacklog, "Pending messages per topic (due now or scheduled for a retry).", "{message}")
	t.unhandled = ins.intGauge(MetricUnhandledBacklog, "Pending messages per topic that this inbox has no handler for.", "{message}")
	t.oldestAge = ins.secondsGauge(MetricOldestPendingAge, "Age of the oldest pending message per topic.")
	t.parked = ins.intGauge(MetricStreamsParked, "Parked streams.", "{stream}")
	t.inGap = ins.intGauge(MetricStreamsGap, "Streams waiting for a missing sequence number.", "{stream}")
	t.maxLag = ins.secondsGauge(MetricStreamsMaxLag, "How long the longest-waiting due message of any stream has been due.")
	t.schemaAttrs = attribute.NewSet(attribute.String(AttrSchema, cfg.Schema))
	if err := ins.err(); err != nil {
		log.warn("inbox: some metric instruments could not be created; they report nothing", "error", err)
	}
	return t
}

// instruments makes a meter's instruments. The API returns a working (if
// possibly no-op) instrument along with any error, so a bad SDK
// configuration costs metrics, not the inbox: the errors are gathered, for
// one warning.
type instruments struct {
	meter metric.Meter
	errs  []error
}

func (in *instruments) counter(name, desc string) metric.Int64Counter {
	c, err := in.meter.Int64Counter(name, metric.WithDescription(desc), metric.WithUnit("{message}"))
	in.errs = append(in.errs, err)
	return c
}

func (in *instruments) histogram(name, desc string, buckets []float64) metric.Float64Histogram {
	h, err := in.meter.Float64Histogram(name, metric.WithDescription(desc), metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(buckets...))
	in.errs = append(in.errs, err)
	return h
}

func (in *instruments) intGauge(name, desc, unit string) metric.Int64ObservableGauge {
	g, err := in.meter.Int64ObservableGauge(name, metric.WithDescription(desc), metric.WithUnit(unit))
	in.errs = append(in.errs, err)
	return g
}

func (in *instruments) secondsGauge(name, desc string) metric.Float64ObservableGauge {
	g, err := in.meter.Float64ObservableGauge(name, metric.WithDescription(desc), metric.WithUnit("s"))
	in.errs = append(in.errs, err)
	return g
}

// err joins the errors of the instruments that could not be made.
func (in *instruments) err() error { return errors.Join(in.errs...) }

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
	if v, ok := t.byOutcome.Load(k); ok {
		return v.(attribute.Set)
	}
	base := t.topicAttrs(topic)
	kvs := append(base.ToSlice(), attribute.String(AttrOutcome, outcome))
	set := attribute.NewSet(kvs...)
	if v, _ := base.Value(AttrTopic); v.AsString() == topic {
		t.byOutcome.Store(k, set)
	}
	return set
}

func (t *telemetry) add(ctx context.Context, c metric.Int64Counter, topic string, n int64) {
	if n > 0 {
		c.Add(ctx, n, metric.WithAttributeSet(t.topicAttrs(topic)))
	}
}

// topicGauge is one topic's backlog: its pending messages, due or
// scheduled, and the age of the oldest.
type topicGauge struct {
	topic   string
	pending int64
	oldest  time.Duration
}

// gaugeStats is what the observable gauges report: the cheap part of Stats,
// read by engine.gauges.
type gaugeStats struct {
	topics       []topicGauge
	parked, gaps int64
	maxLag       time.Duration
}

// batchSummary is what telemetry counts of settled messages: built by
// settle.go, by topic, so telemetry needs nothing of the worker's.
type batchSummary struct {
	processed     []processedMessage
	retried, dead []string // one topic per message
	// doneAt is the commit on the database's clock, for latencies; zero
	// when unknown.
	doneAt time.Time
}

// processedMessage is a message whose handler committed.
type processedMessage struct {
	topic      string
	receivedAt time.Time
}

// counted counts the outcomes of a batch after its commit.
func (t *telemetry) counted(sum batchSummary) {
	ctx := context.Background()
	for _, m := range sum.processed {
		attrs := metric.WithAttributeSet(t.topicAttrs(m.topic))
		t.processed.Add(ctx, 1, attrs)
		if !sum.doneAt.IsZero() && !m.receivedAt.IsZero() {
			t.latency.Record(ctx, max(sum.doneAt.Sub(m.receivedAt), 0).Seconds(), attrs)
		}
	}
	for _, topic := range sum.retried {
		t.add(ctx, t.retried, topic, 1)
	}
	for _, topic := range sum.dead {
		t.add(ctx, t.dead, topic, 1)
	}
}

// observeBacklog registers the callback of the observable gauges, which
// reads them (read) in one transaction per collection; handled says whether
// this Inbox handles a topic. The returned function unregisters it.
func (t *telemetry) observeBacklog(read func(context.Context) (gaugeStats, error), handled func(topic string) bool) (func(), error) {
	reg, err := t.meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		ctx, cancel := context.WithTimeout(ctx, gaugeQueryTimeout)
		defer cancel()
		g, err := read(ctx)
		if err != nil {
			return fmt.Errorf("inbox: observe backlog of schema %s: %w", t.schema, err)
		}
		for _, p := range g.topics {
			attrs := metric.WithAttributeSet(t.topicAttrs(p.topic))
			o.ObserveInt64(t.backlog, p.pending, attrs)
			o.ObserveFloat64(t.oldestAge, p.oldest.Seconds(), attrs)
			if !handled(p.topic) {
				o.ObserveInt64(t.unhandled, p.pending, attrs)
			}
		}
		attrs := metric.WithAttributeSet(t.schemaAttrs)
		o.ObserveInt64(t.parked, g.parked, attrs)
		o.ObserveInt64(t.inGap, g.gaps, attrs)
		o.ObserveFloat64(t.maxLag, g.maxLag.Seconds(), attrs)
		return nil
	}, t.backlog, t.unhandled, t.oldestAge, t.parked, t.inGap, t.maxLag)
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
