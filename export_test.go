package inbox

import (
	"context"
	"time"
)

// Hooks for this package's external tests.

// SetPreCommitHook runs fn in each worker just before it commits a batch.
func (in *Inbox) SetPreCommitHook(fn func()) { in.e.hooks.onPreCommit = fn }

// SetClaimHook reports the outcome of each worker's claim-and-work round.
func (in *Inbox) SetClaimHook(fn func(found int, err error)) { in.e.hooks.onClaimed = fn }

// SetListenHook reports the backend PID of the LISTEN connection.
func (in *Inbox) SetListenHook(fn func(pid uint32)) { in.e.hooks.onListen = fn }

// MaintainOnce runs one maintenance pass now.
func MaintainOnce(in *Inbox, ctx context.Context) error { return in.e.maintainOnce(ctx) }

// RetryDelay exposes the backoff schedule.
func (c Config) RetryDelay(attempt int) time.Duration { return c.withDefaults().retryDelay(attempt) }
