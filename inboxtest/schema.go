package inboxtest

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/internal/devenv"
)

// Env is one test's database: a pool whose search_path starts with a fresh
// schema that holds the inbox tables. Everything is dropped when the test
// ends.
type Env struct {
	// T is the test the Env belongs to; its failures end that test.
	T testing.TB
	// URL is the database's URL (see Postgres).
	URL string
	// Pool is open on the database with Schema first on its search_path.
	// It is closed when the test ends.
	Pool *pgxpool.Pool
	// Schema is the test's schema, migrated; pass it as inbox.Config.Schema.
	Schema string
}

// Setup gives the test an Env: a new, migrated schema on the database of
// Postgres, and a pool of 10 connections whose search_path is that schema
// first, so unqualified table names in the test's handlers land in it too.
// Pools, inboxes stopped by Start and the schema are cleaned up when the
// test ends.
func Setup(t testing.TB) *Env {
	t.Helper()
	url := Postgres(t)
	schema := UniqueName("inboxtest")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := devenv.OpenPool(ctx, url, schema, 10, func(cfg *pgxpool.Config) {
		cfg.ConnConfig.RuntimeParams["search_path"] = schema + ",public"
	})
	if err != nil {
		t.Fatalf("inboxtest: %v", err)
	}
	t.Cleanup(pool.Close)
	createSchema(t, pool, schema)
	return &Env{T: t, URL: url, Pool: pool, Schema: schema}
}

// NewSchema creates a new, uniquely named schema with the inbox tables in
// the database of pool, and drops it (with everything the test created in
// it) when the test ends. Use it with a pool of your own; Setup does both.
func NewSchema(t testing.TB, pool *pgxpool.Pool) string {
	t.Helper()
	schema := UniqueName("inboxtest")
	createSchema(t, pool, schema)
	return schema
}

func createSchema(t testing.TB, pool *pgxpool.Pool, schema string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, drop, err := devenv.NewSchema(ctx, pool, schema)
	if err != nil {
		t.Fatalf("inboxtest: %v", err)
	}
	// drop uses a connection of its own: the test may have closed its pool
	// already (a defer runs before the cleanups).
	t.Cleanup(func() {
		if err := drop(); err != nil {
			t.Logf("inboxtest: %v", err)
		}
	})
}

// NewInbox returns an Inbox on the Env's pool and schema. Fields of cfg left
// zero get values that suit tests rather than the library's defaults:
// workers poll every 50ms, and retries wait 10ms, doubling up to 200ms.
// Schema is always the Env's.
func (e *Env) NewInbox(cfg inbox.Config) *inbox.Inbox {
	e.T.Helper()
	cfg.Schema = e.Schema
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 50 * time.Millisecond
	}
	if cfg.RetryInitial == 0 && cfg.RetryMax == 0 {
		cfg.RetryInitial = 10 * time.Millisecond
		cfg.RetryMax = 200 * time.Millisecond
	}
	if cfg.MaintenanceInterval == 0 {
		cfg.MaintenanceInterval = 500 * time.Millisecond
	}
	in, err := inbox.New(e.Pool, cfg)
	if err != nil {
		e.T.Fatalf("inboxtest: %v", err)
	}
	return in
}

// WaitHandled waits until n messages of the Env's inbox are handled; see the
// package function WaitHandled.
func (e *Env) WaitHandled(n int, timeout time.Duration) {
	e.T.Helper()
	WaitHandled(e.T, e.Pool, e.Schema, n, timeout)
}

// Counts returns how many messages of the Env's inbox are in each state.
func (e *Env) Counts() Counts {
	e.T.Helper()
	return CountMessages(e.T, e.Pool, e.Schema)
}

// Start starts in and stops it when the test ends, before the test's schema
// is dropped (if Start is called after Setup or NewSchema).
func Start(t testing.TB, in *inbox.Inbox) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := in.Start(ctx); err != nil {
		t.Fatalf("inboxtest: start inbox: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := in.Stop(ctx); err != nil {
			t.Errorf("inboxtest: stop inbox: %v", err)
		}
	})
}

// UniqueName returns prefix, an underscore and 12 random hex digits: a
// valid, lower-case SQL identifier (for a valid prefix) and queue name.
func UniqueName(prefix string) string { return devenv.UniqueName(prefix) }
