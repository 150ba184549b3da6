package inbox

import "time"

// suspectCheckInterval is how often, at most, an Inbox's claims look for
// suspects (attempt starts that no live claim holds, see attempts.go) while
// none turn up. Looking costs a read of every attempt start, the live
// claims' included; a suspect exists only after a process died or a claim
// was cut off, and waiting up to this long to take it up again costs
// nothing that matters. The claims that look are paced (engine.suspects, a
// pacer): an Inbox's first claim, every claim while the last look found a
// suspect, and otherwise one claim per interval.
const suspectCheckInterval = time.Second

// suspectWait is how long after a look that found anything (found) the
// next claim looks again.
func suspectWait(found bool) time.Duration {
	if found {
		return 0
	}
	return suspectCheckInterval
}
