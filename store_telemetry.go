package inbox

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Store's telemetry: its span, and the stored, duplicate and dead counts.

// maxSpanLinks bounds the links of a store span; SDKs drop links past
// their own limit (128 by default) anyway.
const maxSpanLinks = 128

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
