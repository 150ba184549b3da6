package inbox

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"

	"github.com/jackc/pgx/v5"
)

// Handler processes one message. Everything it writes through tx commits in
// the same transaction that marks the message done, so its effect is applied
// exactly once; returning an error rolls those writes back and schedules a
// retry (see Permanent and RetryAfter). tx belongs to the inbox: Commit and
// Rollback on it return ErrTxOwned.
//
// A Handler may run more than once for a message (after a crash, or when a
// retry is due) but commits at most once, so side effects outside tx (an HTTP
// call, an email) must be idempotent on their own.
type Handler func(ctx context.Context, tx pgx.Tx, msg *Message) error

// Middleware wraps a Handler, for logging, metrics or filtering.
type Middleware func(Handler) Handler

// JSON adapts a handler of a decoded body. A body that does not decode into T
// fails permanently: retrying cannot fix it.
func JSON[T any](fn func(ctx context.Context, tx pgx.Tx, msg *Message, v T) error) Handler {
	return func(ctx context.Context, tx pgx.Tx, msg *Message) error {
		var v T
		if err := json.Unmarshal(msg.Body, &v); err != nil {
			return Permanent(fmt.Errorf("decode %s body as %T: %w", msg.Topic, v, err))
		}
		return fn(ctx, tx, msg, v)
	}
}

// Chain applies middleware to h, the first one outermost.
func Chain(h Handler, mw ...Middleware) Handler {
	for i := len(mw) - 1; i >= 0; i-- {
		h = mw[i](h)
	}
	return h
}

// handlers is the registry of an Inbox's handlers, by topic.
type handlers struct {
	mu      sync.RWMutex
	byTopic map[string]Handler
}

// add registers h for topic; it reports false if topic has one already.
func (r *handlers) add(topic string, h Handler) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.byTopic[topic]; ok {
		return false
	}
	r.byTopic[topic] = h
	return true
}

// get returns topic's handler, or nil.
func (r *handlers) get(topic string) Handler {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.byTopic[topic]
}

// has reports whether topic has a handler.
func (r *handlers) has(topic string) bool { return r.get(topic) != nil }

// topics lists the topics with a handler, in name order: workers claim
// only those, so instances with different handlers can share one inbox.
func (r *handlers) topics() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.byTopic))
	for t := range r.byTopic {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}
