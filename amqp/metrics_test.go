package amqp_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/amqp"
)

func TestMetrics(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = mp.Shutdown(context.Background()) }()
	ctx := context.Background()
	m, err := amqp.NewMetrics(mp, "orders")
	if err != nil {
		t.Fatal(err)
	}
	m.Received(ctx, 5)
	m.Received(ctx, 2)
	m.Malformed(ctx, inbox.ReasonMissingID)
	m.Malformed(ctx, inbox.ReasonMissingID)
	m.Malformed(ctx, inbox.ReasonBodyTooLarge)
	var nilMetrics *amqp.Metrics
	nilMetrics.Received(ctx, 1) // must not panic
	nilMetrics.Malformed(ctx, "x")

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	if got := sumsBy(rm, amqp.MetricReceived, inbox.AttrSource); len(got) != 1 || got["orders"] != 7 {
		t.Errorf("received = %v, want orders 7", got)
	}
	if got := sumsBy(rm, amqp.MetricMalformed, inbox.AttrReason); len(got) != 2 || got[inbox.ReasonMissingID] != 2 || got[inbox.ReasonBodyTooLarge] != 1 {
		t.Errorf("malformed = %v", got)
	}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != inbox.InstrumentationName {
			t.Errorf("scope %q, want %q", sm.Scope.Name, inbox.InstrumentationName)
		}
	}
}

// sumsBy adds up the int64 sum points of the instrument name per value of
// the attribute key.
func sumsBy(rm metricdata.ResourceMetrics, name, key string) map[string]int64 {
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			sum, ok := m.Data.(metricdata.Sum[int64])
			if m.Name != name || !ok {
				continue
			}
			for _, p := range sum.DataPoints {
				v, _ := p.Attributes.Value(attribute.Key(key))
				out[v.AsString()] += p.Value
			}
		}
	}
	return out
}
