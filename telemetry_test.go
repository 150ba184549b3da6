package inbox_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/inboxkit/inbox"
)

// telemetryBundle is an inbox wired to in-memory OpenTelemetry SDKs.
type telemetryBundle struct {
	*bundle
	reader *sdkmetric.ManualReader
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
	mp     *sdkmetric.MeterProvider
}

func setupTelemetry(t *testing.T) *telemetryBundle {
	b := setup(t)
	tb := &telemetryBundle{bundle: b, reader: sdkmetric.NewManualReader(), spans: tracetest.NewSpanRecorder()}
	tb.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(tb.spans))
	tb.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(tb.reader))
	t.Cleanup(func() {
		_ = tb.tp.Shutdown(context.Background())
		_ = tb.mp.Shutdown(context.Background())
	})
	return tb
}

func (tb *telemetryBundle) newInbox(cfg inbox.Config) *inbox.Inbox {
	cfg.MeterProvider, cfg.TracerProvider = tb.mp, tb.tp
	return tb.bundle.newInbox(cfg)
}

func (tb *telemetryBundle) collect() metricdata.ResourceMetrics {
	tb.t.Helper()
	var rm metricdata.ResourceMetrics
	if err := tb.reader.Collect(tb.ctx, &rm); err != nil {
		tb.t.Fatal(err)
	}
	return rm
}

// point is one data point, reduced to what the tests compare.
type point struct {
	attrs attribute.Set
	value float64 // sum or gauge value; histogram: count
	sum   float64 // histogram sum
}

func points(rm metricdata.ResourceMetrics, name string) []point {
	var out []point
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != inbox.InstrumentationName {
			continue
		}
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					out = append(out, point{attrs: p.Attributes, value: float64(p.Value)})
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					out = append(out, point{attrs: p.Attributes, value: float64(p.Value)})
				}
			case metricdata.Gauge[float64]:
				for _, p := range d.DataPoints {
					out = append(out, point{attrs: p.Attributes, value: p.Value})
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					out = append(out, point{attrs: p.Attributes, value: float64(p.Count), sum: p.Sum})
				}
			}
		}
	}
	return out
}

// byAttr sums the points of name per value of attribute key (and, when
// outcome is set, only points with that outcome).
func byAttr(rm metricdata.ResourceMetrics, name, key, outcome string) map[string]float64 {
	out := map[string]float64{}
	for _, p := range points(rm, name) {
		if outcome != "" {
			if v, _ := p.attrs.Value(inbox.AttrOutcome); v.AsString() != outcome {
				continue
			}
		}
		v, _ := p.attrs.Value(attribute.Key(key))
		out[v.AsString()] += p.value
	}
	return out
}

func TestTelemetryMetrics(t *testing.T) {
	tb := setupTelemetry(t)
	in := tb.newInbox(inbox.Config{MaxAttempts: 3, MaintenanceInterval: 50 * time.Millisecond})
	ok := func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error { return nil }
	in.Handle("ok", ok)
	var flaky counter
	in.Handle("flaky", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		if flaky.add(m.ID) == 1 {
			return errors.New("first attempt fails")
		}
		return nil
	})
	in.Handle("bad", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		return inbox.Permanent(errors.New("never works"))
	})
	if _, err := in.Store(tb.ctx, msgs("ok", 3, "ok")...); err != nil {
		t.Fatal(err)
	}
	res, err := in.Store(tb.ctx,
		inbox.Message{ID: "ok-0", Topic: "ok"}, // a duplicate
		inbox.Message{ID: "f", Topic: "flaky"},
		inbox.Message{ID: "b", Topic: "bad"},
		inbox.Message{ID: "i", Topic: "idle"},                      // no handler: stays pending
		inbox.Message{ID: "p", Topic: "bad", Stream: "p", Seq: 1},  // dead: parks stream p
		inbox.Message{ID: "g-2", Topic: "ok", Stream: "g", Seq: 2}) // waits for seq 1
	if err != nil || res.Duplicates != 1 {
		t.Fatalf("store: %+v, %v", res, err)
	}
	tb.start(in)

	var rm metricdata.ResourceMetrics
	// One collection reads the gauges' query before the counters, so a batch
	// committing in between shows in the counters only: wait until the two
	// agree, and a gauge that stays wrong fails here.
	tb.waitFor("processed and dead counts, the backlog, a parked stream and one on a gap", 30*time.Second, func() bool {
		rm = tb.collect()
		p, d := byAttr(rm, inbox.MetricProcessed, inbox.AttrTopic, ""), byAttr(rm, inbox.MetricDead, inbox.AttrTopic, "")
		backlog := byAttr(rm, inbox.MetricBacklog, inbox.AttrTopic, "")
		parked, gap := points(rm, inbox.MetricStreamsParked), points(rm, inbox.MetricStreamsGap)
		return p["ok"] == 3 && p["flaky"] == 1 && d["bad"] == 2 && backlog["ok"] == 1 && backlog["idle"] == 1 &&
			len(parked) == 1 && parked[0].value == 1 && len(gap) == 1 && gap[0].value == 1
	})
	for _, c := range []struct {
		name string
		want map[string]float64
	}{
		{inbox.MetricStored, map[string]float64{"ok": 4, "flaky": 1, "bad": 2, "idle": 1}},
		{inbox.MetricDuplicates, map[string]float64{"ok": 1}},
		{inbox.MetricProcessed, map[string]float64{"ok": 3, "flaky": 1}},
		{inbox.MetricRetried, map[string]float64{"flaky": 1}},
		{inbox.MetricDead, map[string]float64{"bad": 2}},
	} {
		got := byAttr(rm, c.name, inbox.AttrTopic, "")
		if len(got) != len(c.want) {
			t.Errorf("%s = %v, want %v", c.name, got, c.want)
		}
		for k, v := range c.want {
			if got[k] != v {
				t.Errorf("%s[%s] = %v, want %v", c.name, k, got[k], v)
			}
		}
	}
	if got := byAttr(rm, inbox.MetricHandlerDuration, inbox.AttrTopic, "ok"); got["ok"] != 3 || got["flaky"] != 1 || got["bad"] != 0 {
		t.Errorf("handler runs with outcome ok = %v", got)
	}
	if got := byAttr(rm, inbox.MetricHandlerDuration, inbox.AttrTopic, "error"); got["flaky"] != 1 || got["bad"] != 2 || got["ok"] != 0 {
		t.Errorf("handler runs with outcome error = %v", got)
	}
	var latencies float64
	for _, p := range points(rm, inbox.MetricLatency) {
		latencies += p.value
		if p.sum < 0 || p.sum > 60*p.value {
			t.Errorf("latency sum %v s over %v messages", p.sum, p.value)
		}
	}
	if latencies != 4 {
		t.Errorf("latency recorded for %v messages, want 4", latencies)
	}
	for _, p := range points(rm, inbox.MetricStored) {
		if v, _ := p.attrs.Value(inbox.AttrSchema); v.AsString() != tb.schema {
			t.Errorf("stored point without the schema attribute: %v", p.attrs)
		}
	}

	// The gauges: one point per topic with any message; idle and the
	// ordered message waiting on its gap are pending.
	backlog := byAttr(rm, inbox.MetricBacklog, inbox.AttrTopic, "")
	if backlog["idle"] != 1 || backlog["ok"] != 1 || backlog["bad"] != 0 || len(backlog) != 4 {
		t.Errorf("backlog = %v, want idle 1, ok 1 and 0 for the others", backlog)
	}
	ages := byAttr(rm, inbox.MetricOldestPendingAge, inbox.AttrTopic, "")
	if len(ages) != 4 || ages["bad"] != 0 || ages["idle"] <= 0 || ages["idle"] > 60 {
		t.Errorf("oldest pending ages = %v", ages)
	}
	if lag := points(rm, inbox.MetricStreamsMaxLag); len(lag) != 1 || lag[0].value <= 0 || lag[0].value > 60 {
		t.Errorf("stream max lag = %v, want the wait of g-2", lag)
	}
	// Stopped, the inbox no longer reports the gauges.
	if err := in.Stop(tb.ctx); err != nil {
		t.Fatal(err)
	}
	rm = tb.collect()
	for _, name := range []string{inbox.MetricBacklog, inbox.MetricOldestPendingAge, inbox.MetricStreamsParked, inbox.MetricStreamsGap, inbox.MetricStreamsMaxLag} {
		if p := points(rm, name); len(p) != 0 {
			t.Errorf("%s still observed after Stop: %v", name, p)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a
// logger shared by workers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestTelemetryLogsQuietAndWithoutBodies runs retries, a dead message and a
// parked stream through an inbox logging at Debug, and checks that Info
// says only that the inbox started and stopped, and that no log line holds
// a message body or a connection string.
func TestTelemetryLogsQuietAndWithoutBodies(t *testing.T) {
	b := setup(t)
	var out syncBuffer
	logger := slog.New(slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}))
	in := b.newInbox(inbox.Config{Logger: logger, MaxAttempts: 2})
	const secret = "BODY-SECRET-4711"
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		switch m.ID {
		case "flaky":
			if m.Attempt == 1 {
				return errors.New("transient failure")
			}
		case "dead", "s-1":
			return inbox.Permanent(errors.New("cannot apply"))
		}
		return nil
	})
	var stored []inbox.Message
	for _, id := range []string{"ok-1", "ok-2", "flaky", "dead"} {
		stored = append(stored, inbox.Message{ID: id, Topic: "t", Body: []byte(secret)})
	}
	stored = append(stored, inbox.Message{ID: "s-1", Topic: "t", Stream: "s", Seq: 1, Body: []byte(secret)})
	if _, err := in.Store(b.ctx, stored...); err != nil {
		t.Fatal(err)
	}
	b.start(in)
	b.waitState("done", 3, 30*time.Second)
	b.waitState("dead", 2, 30*time.Second)
	if err := in.Stop(b.ctx); err != nil {
		t.Fatal(err)
	}

	var infos []string
	levels := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var rec struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		levels[rec.Level]++
		if rec.Level == "INFO" {
			infos = append(infos, rec.Msg)
		}
		if strings.Contains(line, secret) || strings.Contains(line, "postgres://") {
			t.Errorf("log line shows a body or a connection string: %s", line)
		}
	}
	if fmt.Sprint(infos) != "[inbox started inbox stopped]" {
		t.Errorf("Info logs = %q, want only the start and the stop", infos)
	}
	// The failures are reported: the retry at Debug, the dead message and
	// the parked stream at Warn.
	if levels["DEBUG"] < 1 || levels["WARN"] < 3 {
		t.Errorf("log levels = %v, want the retry at Debug and the dead messages and park at Warn", levels)
	}
}
