package inbox

import (
	"context"
	"sync"
	"time"
)

// gate lets a suspect's handler (see attempts.go) run alone in the
// process, not only alone in its claim: a process death is then its
// handler's doing, and no innocent message running in another worker at
// the same moment is charged with it. Every claim's handler phase holds one
// of Workers tokens; a solo run holds them all.
type gate struct {
	tokens chan struct{}
	solo   chan struct{} // one solo run gathers tokens at a time
}

func newGate(workers int) *gate {
	return &gate{tokens: make(chan struct{}, workers), solo: make(chan struct{}, 1)}
}

// enter waits for the right to run handlers, alone or shared with the
// other workers, and returns its release. It gives up with ctx, and waits
// at most wait to be alone. The release is also called after hold, so a
// handler that ignores its context cannot keep the gate shut beyond the
// time the server lets its claim live.
func (g *gate) enter(ctx context.Context, alone bool, wait, hold time.Duration) (func(), error) {
	need := 1
	if alone {
		need = cap(g.tokens)
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, wait)
		defer cancel()
		select {
		case g.solo <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	taken := 0
	release := func() {
		for ; taken > 0; taken-- {
			<-g.tokens
		}
		if alone {
			<-g.solo
		}
	}
	for taken < need {
		select {
		case g.tokens <- struct{}{}:
			taken++
		case <-ctx.Done():
			release()
			return nil, ctx.Err()
		}
	}
	var once sync.Once
	timer := time.AfterFunc(hold, func() { once.Do(release) })
	return func() {
		timer.Stop()
		once.Do(release)
	}, nil
}
