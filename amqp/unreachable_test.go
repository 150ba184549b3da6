package amqp_test

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/amqp"
)

type nopStore struct{}

func (nopStore) Validate(inbox.Message) error { return nil }

func (nopStore) Store(_ context.Context, msgs ...inbox.Message) (inbox.StoreResult, error) {
	return inbox.StoreResult{New: make([]bool, len(msgs)), Stored: len(msgs)}, nil
}

// silentBroker accepts TCP connections and never answers, like a broker
// host that hangs.
func silentBroker(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return "amqp://guest:hunter2@" + ln.Addr().String() + "/"
}

func TestUnresponsiveBroker(t *testing.T) {
	t.Parallel()
	var logs logBuffer
	rcv, err := amqp.NewReceiver(nopStore{}, amqp.Config{
		URL:              silentBroker(t),
		Queue:            "q",
		OpenTimeout:      100 * time.Millisecond,
		ReconnectInitial: 20 * time.Millisecond,
		ReconnectMax:     100 * time.Millisecond,
		Logger:           slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rcv.Run(ctx) }()

	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "receiver starting") {
		if time.Now().After(deadline) {
			t.Fatal("the first Run did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := rcv.Run(ctx); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("a second Run returned %v; want already running", err)
	}
	deadline = time.Now().Add(5 * time.Second)
	for rcv.Stats().Reconnects < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("no reconnects after hung handshakes; logs:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Cancelling mid-handshake returns at once, not after OpenTimeout.
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v after cancel; want nil", err)
		}
	case <-time.After(time.Second):
		t.Fatal("Run did not return within 1s of cancel")
	}
	out := logs.String()
	if !strings.Contains(out, "no connection within 100ms") {
		t.Fatalf("logs do not say the handshake timed out:\n%s", out)
	}
	if strings.Contains(out, "hunter2") {
		t.Fatalf("the password reached the logs:\n%s", out)
	}
}

func TestRefusedConnection(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close() // nothing listens there now

	var logs logBuffer
	rcv, err := amqp.NewReceiver(nopStore{}, amqp.Config{
		URL:              "amqp://guest:hunter2@" + addr + "/",
		Queue:            "q",
		ReconnectInitial: 10 * time.Millisecond,
		ReconnectMax:     80 * time.Millisecond,
		Logger:           slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := rcv.Run(ctx); err != nil {
		t.Fatal(err)
	}
	// Capped backoff: about one attempt per 80ms once it has grown, not a
	// busy loop.
	if n := rcv.Stats().Reconnects; n < 2 || n > 25 {
		t.Fatalf("%d reconnects in 1s with ReconnectMax 80ms", n)
	}
	if !strings.Contains(logs.String(), "guest:xxxxx@") || strings.Contains(logs.String(), "hunter2") {
		t.Fatalf("URL not redacted in logs:\n%s", logs.String())
	}
}
