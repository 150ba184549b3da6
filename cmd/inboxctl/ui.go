package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/dashboard"
)

// ui serves the web dashboard (package dashboard) until ctx ends.
func (a *app) ui(ctx context.Context, args []string) error {
	fs := a.newFlagSet("ui [--listen ADDR] [--read-only]")
	listen := fs.String("listen", "127.0.0.1:8080", "`address` to serve the dashboard on")
	readOnly := fs.Bool("read-only", false, "show no actions, and refuse them")
	rest, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("ui: unexpected argument %q", rest[0])
	}
	if err := a.connect(ctx, true); err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(a.stderr, nil))
	opts := dashboard.Options{ReadOnly: *readOnly, Logger: logger}
	// The overview shows the outbox when the schema has one.
	if ob, err := inbox.NewOutbox(a.pool, inbox.OutboxConfig{Schema: a.opts.schema}); err == nil && a.withTimeout(ctx, ob.CheckSchema) == nil {
		opts.Outbox = ob
	}
	handler, err := dashboard.New(a.inbox, opts)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("ui: %w", err)
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(a.stderr, "inboxctl: dashboard of schema %s on http://%s/ (Ctrl-C to stop)\n", a.opts.schema, ln.Addr())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("ui: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("ui: shut down: %w", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("ui: %w", err)
	}
	return nil
}
