package inbox

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Inbox stores messages once each and runs the handler registered for each
// message's topic, in stream order where messages carry a stream. Create it
// with New, register handlers with Handle, then Start it; Stop it before the
// pool closes. Store and the operations methods work without Start, so a
// process may only receive, or only process.
type Inbox struct {
	e *engine

	unhandled unhandledTopics

	lifecycle sync.Mutex
	running   *crew
	unobserve func() // unregisters the backlog gauges of a started Inbox
}

// New returns an Inbox on pool. The schema must be migrated (package
// migrations). pool should have at least Config.Workers+2 connections. A
// started Inbox also opens two connections of its own, with the pool's
// settings: one to LISTEN, one to record the start of handler runs.
func New(pool *pgxpool.Pool, cfg Config) (*Inbox, error) {
	if pool == nil {
		return nil, errors.New("inbox: New: pool is nil")
	}
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Inbox{e: newEngine(pool, cfg)}, nil
}

// Handle registers h for messages of topic, wrapped in Config.Middleware and
// then mw. It panics if topic is empty, h is nil or topic already has a
// handler: those are programming errors, like http.ServeMux's.
func (in *Inbox) Handle(topic string, h Handler, mw ...Middleware) {
	if topic == "" || h == nil {
		panic("inbox: Handle needs a topic and a handler")
	}
	if !in.e.handlers.add(topic, Chain(h, append(append([]Middleware{}, in.e.cfg.Middleware...), mw...)...)) {
		panic(fmt.Sprintf("inbox: topic %q already has a handler", topic))
	}
}

// Config returns the configuration in force, defaults filled in.
func (in *Inbox) Config() Config { return in.e.cfg }

// Start launches the workers, the LISTEN wake-up and the maintenance loop.
// They run until Stop; ctx only bounds start-up.
func (in *Inbox) Start(ctx context.Context) error {
	in.lifecycle.Lock()
	defer in.lifecycle.Unlock()
	if in.running != nil {
		return errors.New("inbox: already started")
	}
	topics := in.e.handlers.topics()
	if len(topics) == 0 {
		return errors.New("inbox: Start: no handlers registered")
	}
	if err := CheckSchema(ctx, in.e.pool, in.e.cfg.Schema); err != nil {
		return err
	}
	// Only a started Inbox reports the backlog, so that short-lived ones
	// (a store-only client, a test) leave no callback behind.
	unobserve, err := in.e.tel.observeBacklog(in.e.gauges, in.e.handlers.has)
	if err != nil {
		return err
	}
	in.unobserve = unobserve
	in.running = in.e.start()
	in.e.log.info("inbox started", "workers", in.e.cfg.Workers, "topics", len(topics))
	return nil
}

// Stop stops claiming new messages and waits for handlers in flight. If ctx
// ends first, it cancels them: their transactions roll back, their messages
// stay pending without an attempt counted, and Stop returns ctx's error at
// once. Nothing stays claimed: a handler still running then (one that
// ignores its context) has its claim released by closing its connection's
// socket, which is logged with the message. Its goroutine is abandoned: it
// returns when the handler does, and finds its connection gone. Until then
// it holds that pool connection, so pgxpool's Close waits for it.
func (in *Inbox) Stop(ctx context.Context) error {
	in.lifecycle.Lock()
	defer in.lifecycle.Unlock()
	c := in.running
	if c == nil {
		return nil
	}
	in.running = nil
	in.unobserve()
	if err := in.e.stop(ctx, c); err != nil {
		in.e.log.warn("inbox stopped with handlers cancelled", "reason", err)
		return fmt.Errorf("inbox: stop: handlers cancelled: %w", err)
	}
	in.e.log.info("inbox stopped")
	return nil
}
