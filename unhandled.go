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

// warnUnhandled warns, once per topic, of stored messages whose topic this
// Inbox has no handler for: they are stored and acked to the broker, and
// then wait, pending, for an Inbox that handles their topic, which may
// never come. An Inbox without any handler is a store for others (a
// receiver-only process) and says nothing.
func (in *Inbox) warnUnhandled(msgs []Message, res StoreResult) {
	if in.cfg.StrictTopics || len(in.topics()) == 0 {
		return
	}
	for i := range msgs {
		topic := msgs[i].Topic
		if i >= len(res.New) || !res.New[i] || in.handler(topic) != nil || !in.unhandled.first(topic) {
			continue
		}
		in.log.warn("inbox: stored a message whose topic has no handler in this Inbox; it stays pending until an Inbox "+
			"with a handler for its topic runs on this schema (Config.StrictTopics rejects such messages at Store instead)",
			"topic", topic, "message_id", msgs[i].ID)
	}
}
