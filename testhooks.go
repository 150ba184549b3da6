package inbox

// testHooks let this package's tests widen race windows and observe
// internals. All are nil outside tests.
type testHooks struct {
	onListen    func(pid uint32)
	onPreCommit func()
	onClaimed   func(found int, err error)
}

func (h testHooks) claimed(found int, err error) {
	if h.onClaimed != nil {
		h.onClaimed(found, err)
	}
}

func (h testHooks) beforeCommit() {
	if h.onPreCommit != nil {
		h.onPreCommit()
	}
}

func (h testHooks) listening(pid uint32) {
	if h.onListen != nil {
		h.onListen(pid)
	}
}
