package inbox

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5"
)

// wakeup tells idle workers that there may be work. Each worker has a
// channel with room for one signal, so a signal is never lost and never
// blocks the sender.
type wakeup struct {
	mu    sync.Mutex
	chans []chan struct{}
}

func (w *wakeup) subscribe() chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := make(chan struct{}, 1)
	w.chans = append(w.chans, c)
	return c
}

func (w *wakeup) signal() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.chans {
		select {
		case c <- struct{}{}:
		default:
		}
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
