package inbox

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
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
	ins := &instruments{meter: t.meter}
	t.enqueuedC = ins.counter(MetricOutboxEnqueued, "Outgoing messages enqueued.")
	t.sent = ins.counter(MetricOutboxSent, "Outgoing messages confirmed by the broker.")
	t.retried = ins.counter(MetricOutboxRetried, "Refused publishes that will be retried.")
	t.dead = ins.counter(MetricOutboxFailed, "Outgoing messages given up on (dead).")
	t.pendingG = ins.intGauge(MetricOutboxPending, "Outgoing messages not yet sent.", "{message}")
	t.oldestG = ins.secondsGauge(MetricOutboxOldestPendingAge, "Age of the oldest outgoing message not yet sent.")
	t.deadG = ins.intGauge(MetricOutboxDead, "Dead outgoing messages kept for an operator.", "{message}")
	if err := ins.err(); err != nil {
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
