package inbox

// testHooks let this package's tests widen race windows and observe
// internals. All are nil outside tests.
type testHooks struct {
	onListen    func(pid uint32)
	onPreCommit func()
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
