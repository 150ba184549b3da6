package inbox

import (
	"context"
	"errors"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5"
)

// listen wakes the workers on NOTIFY from other processes' Store. It holds
// a dedicated connection, outside the pool, and reconnects with backoff when
// it drops; notifications sent meanwhile are lost, which polling covers.
func (e *engine) listen(ctx context.Context) {
	retry := backoff.NewExponentialBackOff()
	retry.InitialInterval = 100 * time.Millisecond
	retry.MaxInterval = 10 * time.Second
	retry.MaxElapsedTime = 0
	for ctx.Err() == nil {
		started := time.Now()
		err := e.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) > time.Minute {
			retry.Reset()
		}
		delay := retry.NextBackOff()
		e.log.warn("inbox listener disconnected; polling until it reconnects", "error", err, "retry_in", delay)
		// Work may have arrived while nobody listened.
		e.wake.signal()
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

func (e *engine) listenOnce(ctx context.Context) error {
	cfg := e.pool.Config().ConnConfig.Copy()
	connectCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.ConnectConfig(connectCtx, cfg)
	cancel()
	if err != nil {
		return err
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	if _, err := conn.Exec(ctx, e.sql.listen); err != nil {
		return err
	}
	e.hooks.listening(conn.PgConn().PID())
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		}
		e.wake.signal()
	}
}
