package inbox

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// sideConn is a connection of the Inbox's own, outside the pool, on which
// workers record and clear attempt starts (attempts.go). A worker does so
// while it holds its claim's pool connection: taking a second one from the
// pool could wait forever once every pool connection is held by a worker
// waiting for another. The statements are short, one per claim, so the
// workers share it.
type sideConn struct {
	cfg *pgx.ConnConfig

	mu     sync.Mutex
	conn   *pgx.Conn
	closed bool // between Stop and Start: no reconnecting
}

// do runs fn on the connection, connecting first if needed. A connection
// that an error or a cancellation may have left in doubt is dropped.
func (s *sideConn) do(ctx context.Context, fn func(*pgx.Conn) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("inbox is stopped")
	}
	if s.conn == nil || s.conn.IsClosed() {
		connectCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		conn, err := pgx.ConnectConfig(connectCtx, s.cfg)
		cancel()
		if err != nil {
			return fmt.Errorf("connect: %w", err)
		}
		s.conn = conn
	}
	err := fn(s.conn)
	if err != nil {
		s.dropLocked()
	}
	return err
}

// open allows connecting again (Start); close drops the connection and
// refuses new ones (Stop).
func (s *sideConn) open() {
	s.mu.Lock()
	s.closed = false
	s.mu.Unlock()
}

func (s *sideConn) close() {
	s.mu.Lock()
	s.closed = true
	s.dropLocked()
	s.mu.Unlock()
}

func (s *sideConn) dropLocked() {
	if s.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = s.conn.Close(ctx)
	s.conn = nil
}
