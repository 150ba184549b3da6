package inbox

import (
	"context"
	"net"
	"sync"
)

// inflight is what one worker is running, for Stop: a handler that ignores
// cancellation cannot be made to return, but the claim it sits in can be
// released by closing the connection under it.
type inflight struct {
	mu   sync.Mutex
	msg  *Message
	conn net.Conn // the claim's socket while a handler runs
}

type inflightKey struct{}

func withInflight(ctx context.Context, f *inflight) context.Context {
	return context.WithValue(ctx, inflightKey{}, f)
}

func inflightOf(ctx context.Context) *inflight {
	f, _ := ctx.Value(inflightKey{}).(*inflight)
	return f
}

func (f *inflight) enter(m *Message, conn net.Conn) {
	if f == nil {
		return
	}
	f.mu.Lock()
	f.msg, f.conn = m, conn
	f.mu.Unlock()
}

func (f *inflight) leave() {
	if f == nil {
		return
	}
	f.mu.Lock()
	f.msg, f.conn = nil, nil
	f.mu.Unlock()
}

// release closes the socket of a claim whose handler is still running and
// returns that handler's message, nil when none runs. The server rolls
// the claim back when it sees the socket closed; the handler's goroutine
// is left to return when it will, and finds its connection gone.
func (f *inflight) release() *Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.msg == nil {
		return nil
	}
	_ = f.conn.Close()
	m := f.msg
	f.msg, f.conn = nil, nil
	return m
}
