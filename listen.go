package inbox

import (
	"context"
	"errors"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// listen wakes the workers on NOTIFY from other processes' Store.
func (e *engine) listen(ctx context.Context) {
	listener{
		name: "inbox listener", pool: e.pool, listen: e.sql.listen, wake: e.wake, log: e.log,
		listening: e.hooks.listening,
	}.run(ctx)
}

// listener wakes waiters on the NOTIFY of one channel. It holds a
// dedicated connection, outside the pool, and reconnects with backoff when
// it drops; notifications sent meanwhile are lost, which polling covers.
// The workers of an Inbox and the relays of an Outbox each run one.
type listener struct {
	name      string // for logs
	pool      *pgxpool.Pool
	listen    string // the LISTEN statement
	wake      *wakeup
	log       logger
	listening func(pid uint32) // called once LISTEN has taken effect
}

// run listens until ctx ends.
func (l listener) run(ctx context.Context) {
	retry := backoff.NewExponentialBackOff()
	retry.InitialInterval = 100 * time.Millisecond
	retry.MaxInterval = 10 * time.Second
	retry.MaxElapsedTime = 0
	for ctx.Err() == nil {
		started := time.Now()
		err := l.once(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) > time.Minute {
			retry.Reset()
		}
		delay := retry.NextBackOff()
		l.log.warn(l.name+" disconnected; polling until it reconnects", "error", err, "retry_in", delay)
		// Work may have arrived while nobody listened.
		l.wake.signal()
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
	}
}

func (l listener) once(ctx context.Context) error {
	connectCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.ConnectConfig(connectCtx, l.pool.Config().ConnConfig.Copy())
	cancel()
	if err != nil {
		return err
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	if _, err := conn.Exec(ctx, l.listen); err != nil {
		return err
	}
	l.listening(conn.PgConn().PID())
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		}
		l.wake.signal()
	}
}
