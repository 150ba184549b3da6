package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/inboxkit/inbox/internal/devenv"
)

// TestOrdersExample runs the example end to end on the local services (or
// INBOX_POSTGRES_URL and INBOX_AMQP_URL), as `go run ./examples/orders`
// does, so the README's first command cannot rot.
func TestOrdersExample(t *testing.T) {
	for _, seed := range []uint64{1, 7} {
		cfg := config{
			postgresURL: devenv.PostgresURL(),
			amqpURL:     devenv.AMQPURL(),
			orders:      20,
			duplicates:  15,
			seed:        seed,
			timeout:     45 * time.Second,
			logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		}
		var out bytes.Buffer
		code := run(context.Background(), cfg, &out)
		if code != 0 || !strings.Contains(out.String(), "\nPASS: all ") {
			t.Fatalf("seed %d: exit status %d, output:\n%s", seed, code, out.String())
		}
		if strings.Contains(out.String(), "warning:") {
			t.Errorf("seed %d: cleanup warned:\n%s", seed, out.String())
		}
	}
}

// TestPlan checks the publisher's plan: every event sent at least once,
// the duplicates as asked, and round 1's held-back events really missing a
// predecessor.
func TestPlan(t *testing.T) {
	p := newPlan(20, 15, 1)
	if len(p.events) != 60 {
		t.Fatalf("%d events, want 60", len(p.events))
	}
	total, dups := p.deliveries(0, 1)
	if total != 75 || dups != 15 {
		t.Fatalf("%d deliveries with %d duplicates, want 75 and 15", total, dups)
	}
	if p.distinct(1) != 60 {
		t.Fatalf("%d distinct events sent, want 60", p.distinct(1))
	}
	ready, waiting := p.readyAfterRound1()
	if ready+len(waiting) != p.distinct(0) {
		t.Fatalf("round 1: %d ready + %d waiting != %d sent", ready, len(waiting), p.distinct(0))
	}
	for _, h := range waiting {
		if len(h.missing) == 0 || h.msg.Seq == 1 {
			t.Errorf("%s held back with nothing missing", h.msg.ID)
		}
	}
	// The same seed gives the same plan.
	q := newPlan(20, 15, 1)
	for r := range p.rounds {
		for i := range p.rounds[r] {
			if p.rounds[r][i].msg.ID != q.rounds[r][i].msg.ID {
				t.Fatalf("plans of one seed differ at round %d position %d", r+1, i)
			}
		}
	}
}
