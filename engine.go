package inbox

import (
	"github.com/jackc/pgx/v5/pgxpool"
)

// engine is the machinery behind the public face, Inbox: the pool and the
// configuration, the statements built for the schema, the registered
// handlers, and what the worker path shares (wake-ups, the gate that lets a
// suspect run alone, the side connection for attempt starts, telemetry),
// and the key idle-stream expiry goes on from. Store, the workers,
// maintenance and the operator actions all work through it; none of them
// knows Inbox.
type engine struct {
	pool     *pgxpool.Pool
	cfg      Config
	log      logger
	sql      queries
	handlers *handlers
	wake     *wakeup
	gate     *gate
	suspects pacer // of the suspect claims (suspects.go)
	floors   claimFloors
	side     *sideConn
	tel      *telemetry
	hooks    testHooks
	expiry   expiryCursor
}

func newEngine(pool *pgxpool.Pool, cfg Config) *engine {
	log := logger{cfg.Logger.With("component", "inbox", "schema", cfg.Schema)}
	return &engine{
		pool:     pool,
		cfg:      cfg,
		log:      log,
		sql:      newQueries(cfg.Schema),
		handlers: &handlers{byTopic: map[string]Handler{}},
		wake:     newWakeup(),
		gate:     newGate(cfg.Workers),
		side:     &sideConn{cfg: pool.Config().ConnConfig.Copy()},
		tel:      newTelemetry(cfg, log),
	}
}

// sourceOf is the dedup namespace of m: its own, or Config.Source.
func (e *engine) sourceOf(m *Message) string {
	if m.Source == "" {
		return e.cfg.Source
	}
	return m.Source
}
