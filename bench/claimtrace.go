package main

import (
	"context"
	"regexp"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// claimSQL recognises the inbox's claim statements by their text: a SELECT
// that locks with SKIP LOCKED. That leaves out the retention cleanup (a
// DELETE) and the gap sweep (a WITH query) of the maintenance loop. The
// library has no claim hook, so the benchmark times claims from outside, at
// the driver; if the claim SQL changes shape, this pattern is the one place
// to follow it, and the smoke test fails when no claim is seen at all.
var claimSQL = regexp.MustCompile(`(?is)^\s*SELECT\b.*\bSKIP\s+LOCKED\b`)

// claimTracer is a pgx tracer (set as the pool's ConnConfig.Tracer) that
// times the inbox's claims: from the start of the round trip that carries a
// claim statement (a single query, or a batch holding one or more) until
// the last claim statement's result has been read. Only successful claims
// count.
type claimTracer struct {
	mu      sync.Mutex
	samples []time.Duration
}

type claimStart struct {
	at      time.Time
	pending int // claim statements of a batch not yet read
}

type claimKey struct{}

func (t *claimTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if !claimSQL.MatchString(d.SQL) {
		return ctx
	}
	return context.WithValue(ctx, claimKey{}, &claimStart{at: time.Now(), pending: 1})
}

func (t *claimTracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryEndData) {
	if s, ok := ctx.Value(claimKey{}).(*claimStart); ok && d.Err == nil {
		t.add(time.Since(s.at))
	}
}

func (t *claimTracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	s := &claimStart{at: time.Now()}
	for _, q := range d.Batch.QueuedQueries {
		if claimSQL.MatchString(q.SQL) {
			s.pending++
		}
	}
	if s.pending == 0 {
		return ctx
	}
	return context.WithValue(ctx, claimKey{}, s)
}

func (t *claimTracer) TraceBatchQuery(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchQueryData) {
	s, ok := ctx.Value(claimKey{}).(*claimStart)
	if !ok || !claimSQL.MatchString(d.SQL) {
		return
	}
	if d.Err != nil {
		s.pending = -1 // a failed claim is not a sample
		return
	}
	if s.pending--; s.pending == 0 {
		t.add(time.Since(s.at))
	}
}

func (t *claimTracer) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

func (t *claimTracer) add(d time.Duration) {
	t.mu.Lock()
	t.samples = append(t.samples, d)
	t.mu.Unlock()
}

// take returns the samples since the last take and forgets them.
func (t *claimTracer) take() []time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.samples
	t.samples = nil
	return s
}

// ClaimLatency is the claim round trip seen by the driver.
type ClaimLatency struct {
	Claims int     `json:"claims"`
	P50Ms  float64 `json:"p50_ms"`
	P99Ms  float64 `json:"p99_ms"`
}

// summarizeClaims reduces samples to their count and percentiles.
func summarizeClaims(samples []time.Duration) *ClaimLatency {
	var l latencies
	l.samples = samples
	s := l.summary()
	return &ClaimLatency{Claims: s.Samples, P50Ms: s.P50Ms, P99Ms: s.P99Ms}
}
