package inbox

import (
	"sync"
	"time"
)

// Claim floors. An unordered claim walks its topic's partial index of
// pending rows from the oldest entry. The entries of messages handled
// since vacuum last visited the table still lie at that end (marked dead
// by the first scan that passes them, but stepped over by every later
// one): at thousands of messages a second, a minute of them, and every
// claim's cost then rises and falls with vacuum. So each topic's claims
// start from a floor: a little before the oldest message the topic's last
// claims returned. Whatever appears below it (a message whose store took
// longer than floorMargin to commit, one whose claim rolled back) is found
// by the claim that, once per floorResetInterval, starts from the very
// beginning and sets the floors again. Nothing is skipped for good; such a
// message waits at most that interval longer.

const (
	// floorMargin is how far below the oldest returned message the floor
	// lies: a store that committed later than its messages' run_at by
	// less than this is never passed over.
	floorMargin = time.Second
	// floorResetInterval is how often a claim starts from the beginning.
	floorResetInterval = time.Second
)

// noFloor is the floor of a claim that starts from the beginning.
var noFloor = time.Time{}

// claimFloors keeps each topic's floor for an Inbox's claims.
type claimFloors struct {
	mu    sync.Mutex
	floor map[string]time.Time
	reset pacer // of the claims from the beginning
}

// forClaim returns the floor of each topic, in the order of topics, for a
// claim starting at now, and whether the claim starts from the beginning
// (its result then sets the floors anew). The reset is paced: due until a
// claim from the beginning succeeds (see claimed), then once per
// floorResetInterval.
func (f *claimFloors) forClaim(now time.Time, topics []string) ([]time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]time.Time, len(topics))
	if f.reset.due(now) {
		return out, true
	}
	for i, t := range topics {
		out[i] = f.floor[t]
	}
	return out, false
}

// claimed records, per topic, the run_at of the oldest message a claim
// that started at now returned. A claim from the beginning sets the floors
// of those topics and clears the others (nothing of theirs was pending and
// unlocked), and puts the next reset an interval later; any other claim
// only raises them.
func (f *claimFloors) claimed(oldest map[string]time.Time, reset bool, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if reset || f.floor == nil {
		f.floor = map[string]time.Time{}
	}
	if reset {
		f.reset.wait(now, floorResetInterval)
	}
	for t, at := range oldest {
		if floor := at.Add(-floorMargin); floor.After(f.floor[t]) {
			f.floor[t] = floor
		}
	}
}
