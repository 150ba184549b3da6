package inbox

import "sync"

// maxUnhandledTopics bounds the topics an Inbox remembers having warned
// about: topics come from publishers, and one that sends a new topic with
// every message must not grow the set without end. Past it, Stats and the
// inbox.backlog.unhandled gauge still report them.
const maxUnhandledTopics = 1000

// unhandledTopics remembers the topics without a handler that an Inbox has
// warned about.
type unhandledTopics struct {
	mu     sync.Mutex
	warned map[string]bool
}

// first reports whether topic is new to the set, and adds it while there is
// room.
func (u *unhandledTopics) first(topic string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.warned[topic] || len(u.warned) >= maxUnhandledTopics {
		return false
	}
	if u.warned == nil {
		u.warned = map[string]bool{}
	}
	u.warned[topic] = true
	return true
}
