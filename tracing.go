package inbox

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Spans: one around each Store call and one around each handler run, both
// joining the trace context the message carries in its headers.

// traceContext reads the W3C trace context; it is the format receivers
// store, whatever global propagator the application installed.
var traceContext = propagation.TraceContext{}

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
