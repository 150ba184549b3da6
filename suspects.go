package inbox

import (
	"sync"
	"time"
)

// suspectCheckInterval is how often, at most, an Inbox's claims look for
// suspects (attempt starts that no live claim holds, see attempts.go) while
// none turn up. Looking costs a read of every attempt start, the live
// claims' included; a suspect exists only after a process died or a claim
// was cut off, and waiting up to this long to take it up again costs
// nothing that matters.
const suspectCheckInterval = time.Second

// suspectPacer decides which claims include the suspect claims: the first
// claim of an Inbox, every claim while the last look found a suspect, and
// otherwise one claim per suspectCheckInterval.
type suspectPacer struct {
	mu   sync.Mutex
	next time.Time // zero: look at the next claim
}

// due reports whether a claim starting at now should look for suspects.
// Claims running at the same moment may all look; that is harmless.
func (p *suspectPacer) due(now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !now.Before(p.next)
}

// looked records what a claim that looked at now found.
func (p *suspectPacer) looked(now time.Time, found bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if found {
		p.next = time.Time{}
	} else {
		p.next = now.Add(suspectCheckInterval)
	}
}
