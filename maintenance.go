package inbox

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// maintain runs the periodic chores: deleting processed rows past their
// retention, sweeping stream gaps and expiring idle streams. Every
// instance runs the loop; a session-level advisory lock lets one of them at
// a time do the work.
func (e *engine) maintain(ctx context.Context) {
	ticker := time.NewTicker(e.cfg.MaintenanceInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		if err := e.maintainOnce(ctx); err != nil && ctx.Err() == nil {
			e.log.warn("inbox maintenance failed", "error", err)
		}
	}
}

// maintainOnce runs the chores if no other instance is running them. The
// session-level advisory lock lives on one pooled connection for the length
// of the run; if this process dies, the server drops it with the connection.
func (e *engine) maintainOnce(ctx context.Context) error {
	conn, err := e.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquire connection: %w", err)
	}
	defer conn.Release()
	key := "inbox-maintain:" + e.cfg.Schema
	var leader bool
	if err := conn.QueryRow(ctx, sqlTryLock, key).Scan(&leader); err != nil {
		return fmt.Errorf("take maintenance lock: %w", err)
	}
	if !leader {
		return nil
	}
	defer func() {
		unlockCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := conn.Exec(unlockCtx, sqlUnlock, key); err != nil {
			// Never hand a connection that may still hold the lock back
			// to the pool.
			_ = conn.Conn().Close(unlockCtx)
		}
	}()
	// The chores are independent: one that fails must not stop the others.
	_, sweepErr := e.sweepGaps(ctx, conn)
	cleanupErr := e.cleanupAll(ctx, conn)
	_, expiryErr := e.expireIdleStreams(ctx, conn)
	return errors.Join(sweepErr, cleanupErr, expiryErr)
}

// cleanupAll deletes processed rows past retention, batch by batch.
func (e *engine) cleanupAll(ctx context.Context, db beginner) error {
	for {
		deleted, err := e.cleanup(ctx, db)
		if err != nil {
			return err
		}
		if deleted < int64(e.cfg.CleanupBatch) || ctx.Err() != nil {
			return nil
		}
	}
}
