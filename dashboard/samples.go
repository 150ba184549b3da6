package dashboard

import (
	"sync"
	"time"
)

// backlogSamples keeps the pending total seen at each overview read, one
// per minute (the last of the minute), for the chart. The database keeps
// no history of the backlog, so the chart shows the minutes during which
// the dashboard was looked at, and says so.
type backlogSamples struct {
	mu      sync.Mutex
	minutes int
	byMin   map[int64]int64 // Unix minute -> pending
}

func newBacklogSamples(minutes int) *backlogSamples {
	return &backlogSamples{minutes: minutes, byMin: map[int64]int64{}}
}

// record stores pending as the sample of at's minute and forgets samples
// older than the window.
func (s *backlogSamples) record(at time.Time, pending int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := at.Unix() / 60
	s.byMin[m] = pending
	for k := range s.byMin {
		if k <= m-int64(s.minutes) {
			delete(s.byMin, k)
		}
	}
}

// series returns the samples of the window ending at at's minute: index i
// is i minutes ago; ok[i] tells whether there is one.
func (s *backlogSamples) series(at time.Time) (vals []int64, ok []bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := at.Unix() / 60
	vals, ok = make([]int64, s.minutes), make([]bool, s.minutes)
	for i := range s.minutes {
		vals[i], ok[i] = s.byMin[m-int64(i)]
	}
	return vals, ok
}
