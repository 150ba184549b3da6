package faults

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// exitCode is the ledger-consumer's exit status for "exit-" messages
// (ExitCode in faults/cmd/ledger-consumer).
const exitCode = 7

// TestHandlerKillsProcess makes the handler end the whole process
// (os.Exit, as a Go fatal error or an OOM kill would) for a few messages,
// one of them in a stream, and restarts the consumer each time it dies.
// Those messages must end dead ("process died during the handler") after
// MaxAttempts runs alone, their stream parked, and everything else applied
// once, instead of the process dying forever.
func TestHandlerKillsProcess(t *testing.T) {
	t.Parallel()
	needLedgerConsumer(t)
	e := setup(t)
	l := newLedger(ledgerSize, ledgerDups, 12)
	x := expectation{failing: map[string]bool{}, deadReason: map[string]string{}}
	parkedStream := ""
	unordered := 0
	for i := range l.entries {
		en := &l.entries[i]
		switch {
		case en.stream == "" && i%150 == 40 && unordered < 2:
			unordered++
		case en.stream != "" && parkedStream == "" && en.seq == 7:
			parkedStream = en.stream
		default:
			continue
		}
		old := en.id
		en.id = "exit-" + en.id
		for j := range l.sends {
			if l.sends[j].id == old {
				l.sends[j].id = en.id
			}
		}
		x.failing[en.id] = true
		x.deadReason[en.id] = "process died during the handler"
	}
	stop := e.restartOnExit(e.start("consumer"), exitCode)
	e.publish(l, chunk, pause).wait(t)
	e.check("handler-exit", l, x)
	if restarts := stop(); restarts == 0 {
		t.Fatal("the handler never took the consumer down")
	}
	if reason := e.parkedReason(parkedStream); !strings.Contains(reason, "process died") {
		t.Errorf("stream %s parked_reason %q, want it parked by its dead message", parkedStream, reason)
	}
}

// restartOnExit watches a consumer: each time it exits with status code it
// counts a fault and starts a new one. It ends when a consumer exits 0
// (stopped by the suite); stop waits for that and returns the restarts.
func (e *env) restartOnExit(p *proc, code int) (stop func() int) {
	done := make(chan struct{})
	restarts := 0
	go func() {
		defer close(done)
		for {
			<-p.exited
			var exit *exec.ExitError
			switch {
			case p.err == nil:
				return
			case errors.As(p.err, &exit) && exit.ExitCode() == code:
				restarts++
				e.fault()
				p = e.start("consumer")
			default:
				e.t.Errorf("consumer exited with %v\n%s", p.err, p.tail())
				return
			}
		}
	}()
	return func() int {
		<-done
		return restarts
	}
}
