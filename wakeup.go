package inbox

import (
	"context"
	"errors"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5"
)

// wakeup tells idle workers that there may be work. It wakes one worker
// per signal, not all of them: a store of a few messages needs one claim,
// and a herd of empty claims slows the store that follows. A worker that
// finds a full batch passes the signal on, so a large store still fans out.
// The one-slot buffer keeps a signal that arrives while every worker is busy.
type wakeup struct {
	c chan struct{}
}

func newWakeup() *wakeup { return &wakeup{c: make(chan struct{}, 1)} }

func (w *wakeup) signal() {
	select {
	case w.c <- struct{}{}:
	default:
	}
}

// notifyChannel is the LISTEN/NOTIFY channel of this inbox's schema, or ""
// when listening is off (Store then sends no NOTIFY).
func (in *Inbox) notifyChannel() string {
	if in.cfg.DisableListen {
		return ""
	}
	name := "inbox_" + in.cfg.Schema
	if len(name) > 63 {
		name = name[:63] // the server truncates LISTEN names the same way
	}
	return name
}

// listen wakes the workers on NOTIFY from other processes' Store. It holds
// a dedicated connection, outside the pool, and reconnects with backoff when
// it drops; notifications sent meanwhile are lost, which polling covers.
func (in *Inbox) listen(ctx context.Context) {
	retry := backoff.NewExponentialBackOff()
	retry.InitialInterval = 100 * time.Millisecond
	retry.MaxInterval = 10 * time.Second
	retry.MaxElapsedTime = 0
	for ctx.Err() == nil {
		started := time.Now()
		err := in.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) > time.Minute {
			retry.Reset()
		}
		delay := retry.NextBackOff()
		in.log.warn("inbox listener disconnected; polling until it reconnects", "error", err, "retry_in", delay)
		// Work may have arrived while nobody listened.
		in.wake.signal()
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

func (in *Inbox) listenOnce(ctx context.Context) error {
	cfg := in.pool.Config().ConnConfig.Copy()
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
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{in.notifyChannel()}.Sanitize()); err != nil {
		return err
	}
	in.hooks.listening(conn.PgConn().PID())
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		}
		in.wake.signal()
	}
}
