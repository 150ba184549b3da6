package inbox

import (
	"context"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Names of the outbox's metric instruments, all with attribute AttrSchema.
const (
	// MetricOutboxEnqueued counts messages enqueued (when Enqueue returns,
	// before the caller commits).
	MetricOutboxEnqueued = "inbox.outbox.enqueued"
	// MetricOutboxSent counts messages the broker confirmed; its rate is the
	// outbox's throughput.
	MetricOutboxSent = "inbox.outbox.sent"
	// MetricOutboxRetried counts refused publishes that will be retried.
	MetricOutboxRetried = "inbox.outbox.retried"
	// MetricOutboxFailed counts messages that went dead.
	MetricOutboxFailed = "inbox.outbox.failed"
	// MetricOutboxPending, MetricOutboxOldestPendingAge (seconds) and
	// MetricOutboxDead are observable gauges of OutboxStats' figures,
	// reported while a relay runs (see Outbox.ObserveStats).
	MetricOutboxPending          = "inbox.outbox.pending"
	MetricOutboxOldestPendingAge = "inbox.outbox.oldest_pending.age"
	MetricOutboxDead             = "inbox.outbox.dead"
)

type outboxTelemetry struct {
	schema                         string
	log                            logger
	meter                          metric.Meter
	enqueuedC, sent, retried, dead metric.Int64Counter
	pendingG, deadG                metric.Int64ObservableGauge
	oldestG                        metric.Float64ObservableGauge
	attrs                          attribute.Set
}

func newOutboxTelemetry(cfg OutboxConfig, log logger) *outboxTelemetry {
	t := &outboxTelemetry{
		schema: cfg.Schema,
		log:    log,
		meter:  cfg.MeterProvider.Meter(InstrumentationName),
		attrs:  attribute.NewSet(attribute.String(AttrSchema, cfg.Schema)),
	}
	var errs []error
	counter := func(name, desc string) metric.Int64Counter {
		c, err := t.meter.Int64Counter(name, metric.WithDescription(desc), metric.WithUnit("{message}"))
		errs = append(errs, err)
		return c
	}
	t.enqueuedC = counter(MetricOutboxEnqueued, "Outgoing messages enqueued.")
	t.sent = counter(MetricOutboxSent, "Outgoing messages confirmed by the broker.")
	t.retried = counter(MetricOutboxRetried, "Refused publishes that will be retried.")
	t.dead = counter(MetricOutboxFailed, "Outgoing messages given up on (dead).")
	var err error
	t.pendingG, err = t.meter.Int64ObservableGauge(MetricOutboxPending,
		metric.WithDescription("Outgoing messages not yet sent."), metric.WithUnit("{message}"))
	errs = append(errs, err)
	t.oldestG, err = t.meter.Float64ObservableGauge(MetricOutboxOldestPendingAge,
		metric.WithDescription("Age of the oldest outgoing message not yet sent."), metric.WithUnit("s"))
	errs = append(errs, err)
	t.deadG, err = t.meter.Int64ObservableGauge(MetricOutboxDead,
		metric.WithDescription("Dead outgoing messages kept for an operator."), metric.WithUnit("{message}"))
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		log.warn("outbox: some metric instruments could not be created; they report nothing", "error", err)
	}
	return t
}

func (t *outboxTelemetry) enqueued(ctx context.Context, n int) {
	if n > 0 {
		t.enqueuedC.Add(ctx, int64(n), metric.WithAttributeSet(t.attrs))
	}
}

func (t *outboxTelemetry) settled(sent, retried, dead int) {
	ctx := context.Background()
	for _, c := range []struct {
		counter metric.Int64Counter
		n       int
	}{{t.sent, sent}, {t.retried, retried}, {t.dead, dead}} {
		if c.n > 0 {
			c.counter.Add(ctx, int64(c.n), metric.WithAttributeSet(t.attrs))
		}
	}
}

// ObserveStats registers the callback of the outbox's gauges, which reads
// Stats once per collection; a relay calls it while it runs. The returned
// function unregisters it.
func (o *Outbox) ObserveStats() (func(), error) {
	t := o.tel
	reg, err := t.meter.RegisterCallback(func(ctx context.Context, obs metric.Observer) error {
		ctx, cancel := context.WithTimeout(ctx, gaugeQueryTimeout)
		defer cancel()
		s, err := o.Stats(ctx)
		if err != nil {
			return err
		}
		attrs := metric.WithAttributeSet(t.attrs)
		obs.ObserveInt64(t.pendingG, s.Pending, attrs)
		obs.ObserveFloat64(t.oldestG, s.OldestPending.Seconds(), attrs)
		obs.ObserveInt64(t.deadG, s.Dead, attrs)
		return nil
	}, t.pendingG, t.oldestG, t.deadG)
	if err != nil {
		return nil, fmt.Errorf("inbox: register outbox gauges: %w", err)
	}
	return func() {
		if err := reg.Unregister(); err != nil {
			t.log.warn("outbox: unregister gauges", "error", err)
		}
	}, nil
}
