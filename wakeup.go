package inbox

// wakeup tells idle workers that there may be work. It wakes one worker
// per signal, not all of them: a store of a few messages needs one claim,
// and a herd of empty claims slows the store that follows. A worker that
// finds a full batch passes the signal on, so a large store still fans out.
// The one-slot buffer keeps a signal that arrives while every worker is busy.
type wakeup struct {
	c chan struct{}
}

func newWakeup() *wakeup { return &wakeup{c: make(chan struct{}, 1)} }

func (w *wakeup) signal() {
	select {
	case w.c <- struct{}{}:
	default:
	}
}

// notifyChannel is the LISTEN/NOTIFY channel of the inbox's schema, or ""
// when listening is off (Store then sends no NOTIFY).
func (c Config) notifyChannel() string {
	if c.DisableListen {
		return ""
	}
	return channelName("inbox_", c.Schema)
}

// channelName is the LISTEN/NOTIFY channel of schema for prefix.
func channelName(prefix, schema string) string {
	name := prefix + schema
	if len(name) > 63 {
		name = name[:63] // the server truncates LISTEN names the same way
	}
	return name
}
