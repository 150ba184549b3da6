package inbox

import (
	"sync"
	"time"
)

// pacer spaces out a check that claims make now and then (the suspect
// claims, a claim from the beginning that resets the claim floors): the
// check is due until one succeeds, and then again once the wait that one
// set has passed. A check that fails leaves it due for the next claim.
// Claims running at the same moment may all find it due; that is harmless
// for the checks paced here.
type pacer struct {
	mu   sync.Mutex
	next time.Time // zero: due at the next claim
}

// due reports whether a claim starting at now should make the check.
func (p *pacer) due(now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !now.Before(p.next)
}

// wait records a check that started at now and succeeded: the next is due
// d later (at once for 0).
func (p *pacer) wait(now time.Time, d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if d == 0 {
		p.next = time.Time{}
	} else {
		p.next = now.Add(d)
	}
}
