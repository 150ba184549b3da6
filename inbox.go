package inbox

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/inboxkit/inbox/internal/sqlident"
)

// Inbox stores messages once each and runs the handler registered for each
// message's topic, in stream order where messages carry a stream. Create it
// with New, register handlers with Handle, then Start it; Stop it before the
// pool closes. Store and the operations methods work without Start, so a
// process may only receive, or only process.
type Inbox struct {
	pool *pgxpool.Pool
	cfg  Config
	log  logger
	sql  queries
	wake *wakeup
	gate *gate
	side *sideConn
	tel  *telemetry

	expiry expiryCursor

	mu       sync.RWMutex
	handlers map[string]Handler

	unhandled unhandledTopics

	lifecycle sync.Mutex
	running   *run
	hooks     testHooks
}

// run is one Start..Stop cycle's goroutines and their controls.
type run struct {
	stopClaiming context.CancelFunc // workers finish their transaction and exit
	cancelWork   context.CancelFunc // in-flight handlers are cancelled
	unobserve    func()             // unregisters the backlog gauges
	inflight     []*inflight        // each worker's running handler
	done         sync.WaitGroup
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
	log := logger{cfg.Logger.With("component", "inbox", "schema", cfg.Schema)}
	return &Inbox{
		pool:     pool,
		cfg:      cfg,
		log:      log,
		sql:      newQueries(sqlident.Quote(cfg.Schema)),
		wake:     newWakeup(),
		gate:     newGate(cfg.Workers),
		side:     &sideConn{cfg: pool.Config().ConnConfig.Copy()},
		tel:      newTelemetry(cfg, log),
		handlers: map[string]Handler{},
	}, nil
}

// Handle registers h for messages of topic, wrapped in Config.Middleware and
// then mw. It panics if topic is empty, h is nil or topic already has a
// handler: those are programming errors, like http.ServeMux's.
func (in *Inbox) Handle(topic string, h Handler, mw ...Middleware) {
	if topic == "" || h == nil {
		panic("inbox: Handle needs a topic and a handler")
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if _, ok := in.handlers[topic]; ok {
		panic(fmt.Sprintf("inbox: topic %q already has a handler", topic))
	}
	in.handlers[topic] = Chain(h, append(append([]Middleware{}, in.cfg.Middleware...), mw...)...)
}

func (in *Inbox) handler(topic string) Handler {
	in.mu.RLock()
	defer in.mu.RUnlock()
	return in.handlers[topic]
}

// topics lists the topics this Inbox handles: workers claim only those, so
// instances with different handlers can share one inbox.
func (in *Inbox) topics() []string {
	in.mu.RLock()
	defer in.mu.RUnlock()
	out := make([]string, 0, len(in.handlers))
	for t := range in.handlers {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// Config returns the configuration in force, defaults filled in.
func (in *Inbox) Config() Config { return in.cfg }

// Start launches the workers, the LISTEN wake-up and the maintenance loop.
// They run until Stop; ctx only bounds start-up.
func (in *Inbox) Start(ctx context.Context) error {
	in.lifecycle.Lock()
	defer in.lifecycle.Unlock()
	if in.running != nil {
		return errors.New("inbox: already started")
	}
	if len(in.topics()) == 0 {
		return errors.New("inbox: Start: no handlers registered")
	}
	if err := in.checkSchema(ctx); err != nil {
		return err
	}
	// Only a started Inbox reports the backlog, so that short-lived ones
	// (a store-only client, a test) leave no callback behind.
	unobserve, err := in.tel.observeBacklog(in)
	if err != nil {
		return err
	}
	in.side.open()
	claimCtx, stopClaiming := context.WithCancel(context.Background())
	workCtx, cancelWork := context.WithCancel(context.Background())
	r := &run{stopClaiming: stopClaiming, cancelWork: cancelWork, unobserve: unobserve}
	for i := 0; i < in.cfg.Workers; i++ {
		w := &worker{in: in, id: i}
		f := &inflight{}
		r.inflight = append(r.inflight, f)
		r.goRun(func() { w.run(claimCtx, withInflight(workCtx, f)) })
	}
	if !in.cfg.DisableListen {
		r.goRun(func() { in.listen(claimCtx) })
	}
	r.goRun(func() { in.maintain(claimCtx) })
	in.running = r
	in.log.info("inbox started", "workers", in.cfg.Workers, "topics", len(in.topics()))
	return nil
}

func (r *run) goRun(fn func()) {
	r.done.Add(1)
	go func() {
		defer r.done.Done()
		fn()
	}()
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
	r := in.running
	if r == nil {
		return nil
	}
	in.running = nil
	r.unobserve()
	r.stopClaiming()
	exited := make(chan struct{})
	go func() { r.done.Wait(); close(exited) }()
	select {
	case <-exited:
		r.cancelWork()
		in.side.close()
		in.log.info("inbox stopped")
		return nil
	case <-ctx.Done():
		r.cancelWork()
		for _, f := range r.inflight {
			if m := f.release(); m != nil {
				in.log.error("inbox: handler still running at Stop's deadline; closed its connection to release its claim",
					"row_id", m.RowID, "message_id", m.ID, "topic", m.Topic)
			}
		}
		// A worker that aborts after this cannot clear its claim's attempt
		// starts: those messages then run alone once each, later.
		in.side.close()
		in.log.warn("inbox stopped with handlers cancelled", "reason", ctx.Err())
		return fmt.Errorf("inbox: stop: handlers cancelled: %w", ctx.Err())
	}
}

func (in *Inbox) checkSchema(ctx context.Context) error {
	var ok bool
	err := in.pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL",
		sqlident.Quote(in.cfg.Schema)+".inbox_messages", sqlident.Quote(in.cfg.Schema)+".inbox_streams").Scan(&ok)
	if err != nil {
		return fmt.Errorf("inbox: check schema %s: %w", in.cfg.Schema, err)
	}
	if !ok {
		return fmt.Errorf("inbox: schema %s has no inbox tables: run migrations.Up first", in.cfg.Schema)
	}
	return nil
}
