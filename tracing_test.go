package inbox_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/inboxkit/inbox"
)

func TestTelemetryTraceContinuesFromDeliveryToHandler(t *testing.T) {
	tb := setupTelemetry(t)
	in := tb.newInbox(inbox.Config{})
	inHandler := make(chan trace.SpanContext, 3)
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		inHandler <- trace.SpanContextFromContext(ctx)
		return nil
	})

	// The publisher's span, as a receiver would find it in the headers.
	publish := func(name string) (trace.SpanContext, map[string]string) {
		ctx, span := tb.tp.Tracer("publisher").Start(context.Background(), name)
		defer span.End()
		headers := map[string]string{"other": "x"}
		propagation.TraceContext{}.Inject(ctx, propagation.MapCarrier(headers))
		return span.SpanContext(), headers
	}
	pub, headers := publish("publish traced")
	headers[inbox.HeaderTraceState] = "vendor=abc"
	if _, err := in.Store(tb.ctx, inbox.Message{ID: "traced", Topic: "t", Headers: headers}); err != nil {
		t.Fatal(err)
	}
	if _, err := in.Store(tb.ctx, inbox.Message{ID: "plain", Topic: "t"}); err != nil {
		t.Fatal(err)
	}
	pubA, headersA := publish("publish a")
	pubB, headersB := publish("publish b")
	if _, err := in.Store(tb.ctx, inbox.Message{ID: "a", Topic: "u", Headers: headersA}, inbox.Message{ID: "b", Topic: "u", Headers: headersB}); err != nil {
		t.Fatal(err)
	}
	tb.start(in)
	tb.waitState("done", 2, 30*time.Second)

	var stores, handles []sdktrace.ReadOnlySpan
	tb.waitFor("two handler spans", 10*time.Second, func() bool {
		stores, handles = nil, nil
		for _, s := range tb.spans.Ended() {
			switch s.Name() {
			case "inbox store":
				stores = append(stores, s)
			case "inbox handle t":
				handles = append(handles, s)
			}
		}
		return len(handles) == 2
	})
	if len(stores) != 3 {
		t.Fatalf("%d store spans, want 3", len(stores))
	}
	// One message with a trace context: the store span continues it.
	if got := stores[0].Parent(); got.SpanID() != pub.SpanID() || stores[0].SpanContext().TraceID() != pub.TraceID() {
		t.Errorf("store span's parent = %v, want the publisher's span %v", got.SpanID(), pub.SpanID())
	}
	if stores[1].Parent().IsValid() || len(stores[1].Links()) != 0 {
		t.Errorf("store of an untraced message has parent %v and %d links", stores[1].Parent(), len(stores[1].Links()))
	}
	// Two messages of different traces: a new trace, linked to both.
	if stores[2].Parent().IsValid() || len(stores[2].Links()) != 2 ||
		stores[2].Links()[0].SpanContext.SpanID() != pubA.SpanID() || stores[2].Links()[1].SpanContext.SpanID() != pubB.SpanID() {
		t.Errorf("store of two traced messages: parent %v, links %v", stores[2].Parent(), stores[2].Links())
	}

	var traced, plain sdktrace.ReadOnlySpan
	for _, s := range handles {
		for _, a := range s.Attributes() {
			if a.Key == inbox.AttrMessageID {
				if a.Value.AsString() == "traced" {
					traced = s
				} else {
					plain = s
				}
			}
		}
	}
	if traced == nil || plain == nil {
		t.Fatalf("handler spans lack their message IDs: %v", handles)
	}
	if traced.Parent().SpanID() != pub.SpanID() || traced.SpanContext().TraceID() != pub.TraceID() || !traced.Parent().IsRemote() {
		t.Errorf("handler span's parent = %v in trace %v, want the publisher's span %v in trace %v",
			traced.Parent().SpanID(), traced.SpanContext().TraceID(), pub.SpanID(), pub.TraceID())
	}
	if got := traced.SpanContext().TraceState().Get("vendor"); got != "abc" {
		t.Errorf("handler span's tracestate vendor = %q, want the stored abc", got)
	}
	if traced.SpanKind() != trace.SpanKindConsumer {
		t.Errorf("handler span kind = %v", traced.SpanKind())
	}
	if plain.Parent().IsValid() {
		t.Errorf("handler span of an untraced message has parent %v", plain.Parent())
	}
	// The handler's context carries its span, so its own spans nest.
	seen := map[trace.SpanID]bool{}
	for i := 0; i < 2; i++ {
		seen[(<-inHandler).SpanID()] = true
	}
	if !seen[traced.SpanContext().SpanID()] || !seen[plain.SpanContext().SpanID()] {
		t.Errorf("handler contexts carried spans %v, want the handler spans", seen)
	}
}

func TestTelemetryHandlerSpanRecordsFailure(t *testing.T) {
	tb := setupTelemetry(t)
	in := tb.newInbox(inbox.Config{})
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		return inbox.Permanent(errors.New("boom"))
	})
	if _, err := in.Store(tb.ctx, inbox.Message{ID: "x", Topic: "t"}); err != nil {
		t.Fatal(err)
	}
	tb.start(in)
	tb.waitState("dead", 1, 30*time.Second)
	tb.waitFor("the handler span", 10*time.Second, func() bool {
		for _, s := range tb.spans.Ended() {
			if s.Name() == "inbox handle t" {
				if s.Status().Code.String() != "Error" || len(s.Events()) == 0 {
					t.Errorf("failed handler span: status %v, events %v", s.Status(), s.Events())
				}
				return true
			}
		}
		return false
	})
}
