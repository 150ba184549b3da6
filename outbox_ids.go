package inbox

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"sync/atomic"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// What an outgoing message carries beside its content: an ID that a
// retried handler derives again, and the trace context of the enqueuing
// span.

// traceHeaders renders the span context of ctx as W3C trace context
// headers, or nil without one.
func traceHeaders(ctx context.Context) map[string]string {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return nil
	}
	h := map[string]string{}
	propagation.TraceContext{}.Inject(ctx, propagation.MapCarrier(h))
	return h
}

// handlerRun is one run of a handler: the message it handles and how many
// outgoing messages it has enqueued so far. A retried handler gets a fresh
// run, so it counts from zero again and derives the same IDs.
type handlerRun struct {
	msg      *Message
	enqueued atomic.Int64
}

type handlerRunKey struct{}

// withHandlerRun marks ctx as the context of one handler run of m.
func withHandlerRun(ctx context.Context, m *Message) context.Context {
	return context.WithValue(ctx, handlerRunKey{}, &handlerRun{msg: m})
}

func handlerRunFrom(ctx context.Context) *handlerRun {
	r, _ := ctx.Value(handlerRunKey{}).(*handlerRun)
	return r
}

// nextID is the ID of the next outgoing message: derived from the incoming
// message's (source, ID) and the position in the run inside a handler, random
// outside one. Derived IDs are UUIDs (version 8, from SHA-256).
func (r *handlerRun) nextID() string {
	var b [16]byte
	if r == nil {
		_, _ = rand.Read(b[:])
		b[6] = b[6]&0x0f | 0x40
	} else {
		pos := r.enqueued.Add(1) - 1
		h := sha256.New()
		h.Write([]byte("inbox-outbox\x00" + r.msg.Source + "\x00" + r.msg.ID + "\x00"))
		_ = binary.Write(h, binary.BigEndian, pos)
		copy(b[:], h.Sum(nil))
		b[6] = b[6]&0x0f | 0x80
	}
	b[8] = b[8]&0x3f | 0x80
	s := hex.EncodeToString(b[:])
	return s[:8] + "-" + s[8:12] + "-" + s[12:16] + "-" + s[16:20] + "-" + s[20:]
}
