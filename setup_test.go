package inbox_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/internal/sqlident"
	"github.com/inboxkit/inbox/internal/testenv"
)

// bundle is what most tests need: a migrated schema, a pool on it, an effect
// table that handlers write through their transaction, and helpers.
type bundle struct {
	t      *testing.T
	ctx    context.Context
	pool   *pgxpool.Pool
	schema string
	q      string // quoted schema
}

func setup(t *testing.T) *bundle {
	t.Helper()
	t.Parallel()
	pool, schema := testenv.Schema(t, 20)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	b := &bundle{t: t, ctx: ctx, pool: pool, schema: schema, q: sqlident.Quote(schema)}
	b.exec(`CREATE TABLE ` + b.q + `.effects (
		message_id text PRIMARY KEY,
		stream     text,
		seq        bigint,
		applied    bigserial)`)
	return b
}

func (b *bundle) exec(sql string, args ...any) {
	b.t.Helper()
	if _, err := b.pool.Exec(b.ctx, sql, args...); err != nil {
		b.t.Fatalf("%s: %v", sql, err)
	}
}

func (b *bundle) count(sql string, args ...any) int {
	b.t.Helper()
	var n int
	if err := b.pool.QueryRow(b.ctx, sql, args...).Scan(&n); err != nil {
		b.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// newInbox returns an Inbox on the bundle's schema, stopped at test end.
func (b *bundle) newInbox(cfg inbox.Config) *inbox.Inbox {
	b.t.Helper()
	cfg.Schema = b.schema
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 50 * time.Millisecond
	}
	if cfg.RetryInitial == 0 {
		cfg.RetryInitial = 10 * time.Millisecond
		cfg.RetryMax = 50 * time.Millisecond
	}
	in, err := inbox.New(b.pool, cfg)
	if err != nil {
		b.t.Fatal(err)
	}
	return in
}

func (b *bundle) start(in *inbox.Inbox) {
	b.t.Helper()
	if err := in.Start(b.ctx); err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = in.Stop(ctx)
	})
}

// effect is a handler that records one effect row per message in the
// handler's transaction; the primary key catches any double effect.
func (b *bundle) effect(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
	var stream any
	if m.Stream != "" {
		stream = m.Stream
	}
	_, err := tx.Exec(ctx, `INSERT INTO `+b.q+`.effects (message_id, stream, seq) VALUES ($1, $2, $3)`, m.ID, stream, m.Seq)
	return err
}

// waitFor polls cond until it holds or the deadline passes.
func (b *bundle) waitFor(what string, timeout time.Duration, cond func() bool) {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			b.t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (b *bundle) waitState(state string, want int, timeout time.Duration) {
	b.t.Helper()
	b.waitFor(fmt.Sprintf("%d messages %s", want, state), timeout, func() bool {
		return b.count(`SELECT count(*) FROM `+b.q+`.inbox_messages WHERE state = $1`, state) == want
	})
}

func msgs(topic string, n int, prefix string) []inbox.Message {
	out := make([]inbox.Message, n)
	for i := range out {
		out[i] = inbox.Message{ID: fmt.Sprintf("%s-%d", prefix, i), Topic: topic, Body: []byte(`{}`)}
	}
	return out
}

// counter counts handler calls per message ID.
type counter struct {
	mu    sync.Mutex
	calls map[string]int
}

func (c *counter) add(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.calls == nil {
		c.calls = map[string]int{}
	}
	c.calls[id]++
	return c.calls[id]
}

func (c *counter) get(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[id]
}
