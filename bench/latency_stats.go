package main

import (
	"slices"
	"sync"
	"time"
)

// Latency is the publish-to-handler-start latency of one run.
type Latency struct {
	// OfferedRate is the publishing rate asked for (0 at saturation: as
	// fast as the publisher goes); AchievedRate is the handled rate.
	OfferedRate  float64 `json:"offered_rate"`
	AchievedRate float64 `json:"achieved_rate"`
	P50Ms        float64 `json:"p50_ms"`
	P95Ms        float64 `json:"p95_ms"`
	P99Ms        float64 `json:"p99_ms"`
	MaxMs        float64 `json:"max_ms"`
	Samples      int     `json:"samples"`
	// The latency in two parts, split at the inbox row's received_at (the
	// start of the store transaction, by the database's clock on this same
	// machine): publish to store (broker, receiver batching), then store to
	// handler (insert and commit, wake-up, claim).
	ToStoreP50Ms   float64 `json:"to_store_p50_ms"`
	ToStoreP99Ms   float64 `json:"to_store_p99_ms"`
	ToHandlerP50Ms float64 `json:"to_handler_p50_ms"`
	ToHandlerP99Ms float64 `json:"to_handler_p99_ms"`
}

// latencies collects samples from concurrent handlers.
type latencies struct {
	mu      sync.Mutex
	samples []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.samples = append(l.samples, d)
	l.mu.Unlock()
}

// summary returns the percentiles by the nearest-rank method.
func (l *latencies) summary() Latency {
	l.mu.Lock()
	s := slices.Clone(l.samples)
	l.mu.Unlock()
	if len(s) == 0 {
		return Latency{}
	}
	slices.Sort(s)
	rank := func(p float64) float64 {
		i := int(float64(len(s))*p+0.999999) - 1
		i = min(max(i, 0), len(s)-1)
		return float64(s[i]) / float64(time.Millisecond)
	}
	return Latency{
		P50Ms:   rank(0.50),
		P95Ms:   rank(0.95),
		P99Ms:   rank(0.99),
		MaxMs:   float64(s[len(s)-1]) / float64(time.Millisecond),
		Samples: len(s),
	}
}
