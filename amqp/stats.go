package amqp

import (
	"sync"
	"sync/atomic"
)

// Stats are the Receiver's counters since NewReceiver.
type Stats struct {
	// Received counts deliveries taken from the broker, redeliveries
	// included.
	Received uint64
	// Acked counts deliveries acked after their batch, and every batch
	// before it, was stored.
	Acked uint64
	// Stored and Duplicates count the outcomes of committed stores: new
	// rows, and deliveries whose message was already stored (redeliveries
	// included). They count a batch when it commits, acked or not: one
	// stored by a session that ended before its ack comes back as
	// duplicates. A store retried after a commit whose outcome was unknown
	// counts its messages as duplicates.
	Stored, Duplicates uint64
	// Rejected counts deliveries rejected to the dead-letter exchange, by
	// reason (the inbox.Reason constants, ReasonBadStream,
	// ReasonHeadersTooLarge).
	Rejected map[string]uint64
	// StoreFailures counts failed attempts to store a batch.
	StoreFailures uint64
	// Reconnects counts broker sessions after the first.
	Reconnects uint64
	// Undecodable counts sessions killed by a delivery that amqp091-go could
	// not decode (see Topology).
	Undecodable uint64
}

// RejectedTotal sums Rejected.
func (s Stats) RejectedTotal() uint64 {
	var n uint64
	for _, v := range s.Rejected {
		n += v
	}
	return n
}

// Stats returns a snapshot of the counters. It is safe to call at any time.
func (r *Receiver) Stats() Stats {
	return r.stats.snapshot()
}

type counters struct {
	received, acked, stored, duplicates atomic.Uint64
	storeFailures, reconnects           atomic.Uint64
	undecodable                         atomic.Uint64

	mu       sync.Mutex
	rejected map[string]uint64
}

func (c *counters) reject(reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rejected == nil {
		c.rejected = map[string]uint64{}
	}
	c.rejected[reason]++
}

func (c *counters) snapshot() Stats {
	c.mu.Lock()
	rejected := make(map[string]uint64, len(c.rejected))
	for k, v := range c.rejected {
		rejected[k] = v
	}
	c.mu.Unlock()
	return Stats{
		Received:      c.received.Load(),
		Acked:         c.acked.Load(),
		Stored:        c.stored.Load(),
		Duplicates:    c.duplicates.Load(),
		Rejected:      rejected,
		StoreFailures: c.storeFailures.Load(),
		Reconnects:    c.reconnects.Load(),
		Undecodable:   c.undecodable.Load(),
	}
}
