package amqp

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// link is one AMQP connection together with the socket under it. amqp091-go
// calls take no context, so a broker that stops answering is cut off by
// closing the socket, which fails every call waiting on the connection.
type link struct {
	conn *amqp091.Connection

	mu   sync.Mutex
	sock net.Conn
}

// dial connects to url within timeout, or until ctx ends.
func dial(ctx context.Context, url string, cfg amqp091.Config, timeout time.Duration) (*link, error) {
	l := &link{}
	dialCtx, cancelDial := context.WithCancel(context.Background())
	defer cancelDial()
	open := cfg.Dial
	if open == nil {
		open = func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: timeout}
			c, err := d.DialContext(dialCtx, network, addr)
			if err != nil {
				return nil, err
			}
			// A backstop for the TLS and AMQP handshakes, after the timer
			// below; amqp091-go clears it once the connection is open.
			if err := c.SetDeadline(time.Now().Add(2 * timeout)); err != nil {
				_ = c.Close()
				return nil, err
			}
			return c, nil
		}
	}
	cfg.Dial = func(network, addr string) (net.Conn, error) {
		c, err := open(network, addr)
		if err == nil {
			l.mu.Lock()
			l.sock = c
			l.mu.Unlock()
		}
		return c, err
	}
	cfg.Recovery = nil

	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.conn, err = amqp091.DialConfig(url, cfg)
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-ctx.Done():
		cancelDial()
		l.cut()
		<-done
		if err == nil {
			l.close(0)
		}
		return nil, fmt.Errorf("dial: %w", ctx.Err())
	case <-timer.C:
		cancelDial()
		l.cut()
		<-done
		if err == nil {
			l.close(0)
		}
		return nil, fmt.Errorf("dial: no connection within %s", timeout)
	}
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	return l, nil
}

// cut closes the socket under the connection.
func (l *link) cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sock != nil {
		_ = l.sock.Close()
	}
}

// bounded runs op, a call on the connection or one of its channels, and cuts
// the connection if op has not returned within timeout or when ctx ends. It
// returns only after op has returned.
func (l *link) bounded(ctx context.Context, timeout time.Duration, what string, op func() error) error {
	done := make(chan error, 1)
	go func() { done <- op() }()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	case <-ctx.Done():
		l.cut()
		<-done
		return fmt.Errorf("%s: %w", what, ctx.Err())
	case <-timer.C:
		l.cut()
		<-done
		return fmt.Errorf("%s: no answer from the broker within %s", what, timeout)
	}
}

// close closes the connection, waiting at most timeout for the broker to
// confirm, and then the socket in any case. Deliveries not yet acked go back
// to the queue.
func (l *link) close(timeout time.Duration) {
	if l.conn != nil && !l.conn.IsClosed() {
		_ = l.conn.CloseDeadline(time.Now().Add(timeout))
	}
	l.cut()
}

// withConnectionName returns a copy of props (amqp091-go's defaults when
// empty) that names the connection, unless props names it already: the
// name is how operators tell the receiver's and the relay's connections
// apart in the broker's tools.
func withConnectionName(props amqp091.Table, name string) amqp091.Table {
	out := amqp091.Table{}
	for k, v := range props {
		out[k] = v
	}
	if len(out) == 0 {
		out = amqp091.NewConnectionProperties()
	}
	if _, ok := out["connection_name"]; !ok {
		out["connection_name"] = name
	}
	return out
}
