package inbox

import (
	"context"
	"encoding/json"
	"fmt"

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
