package inbox

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Attempt starts. A claim's attempts are counted in its own transaction,
// which dies with the process: a handler that kills the process (os.Exit,
// a Go fatal error, an OOM kill) would run again forever and take its
// batch-mates down each time. So before a claim runs its handlers, the
// worker records that their runs have started, in inbox_attempt_starts, in
// one statement on another connection, where it survives the claim. The
// transaction that records the outcomes deletes those rows. (That other
// connection is the Inbox's own, see sideconn.go.)
//
// A row whose message no live claim holds is a run that never finished: a
// suspect. Normal claims leave suspects out; a claim that looks for them
// (an Inbox's first, and then one a second unless they keep turning up,
// see suspects.go) takes at most one suspect, alone, and runs it while no
// other worker of the Inbox runs a handler (see gate.go), so that if it
// kills the process again nothing else is lost with it and the death is
// its own. Each such run that never finishes counts as a death, and after
// MaxAttempts deaths the message is dead without running again (an ordered
// one parks its stream, as dead messages do). A death in a batch
// counts for no one, since nobody can tell which handler caused it.

// starts is what a claim knows of its attempt starts.
type starts struct {
	solo     bool           // the claim holds one suspect, to run alone
	recorded []int64        // rows this claim wrote, to delete with the outcomes
	suspects map[int64]bool // candidates that were suspects already: not run in a batch
	deaths   map[int64]int  // deaths of the solo suspect
	forget   []int64        // rows to delete with the outcomes
	started  int            // handlers started so far
	until    time.Time      // no handler starts after this, but the first
}

// recordStarts writes the attempt starts of a claim's candidates, ids,
// before any of its handlers runs. A solo run counts a
// death in advance: the outcome's transaction deletes it if the run
// finishes.
func (e *engine) recordStarts(ctx context.Context, st *starts, ids []int64) error {
	if st.solo {
		for _, id := range ids {
			if st.deaths[id] >= e.cfg.MaxAttempts {
				// Buried without running: nothing to record.
				st.forget = append(st.forget, id)
				return nil
			}
		}
	}
	if len(ids) == 0 {
		return nil
	}
	death := 0
	if st.solo {
		death = 1 // alone in the process, so a death is this handler's
	}
	var prior []int64
	err := e.side.do(ctx, func(conn *pgx.Conn) error {
		rows, err := conn.Query(ctx, e.sql.recordStarts, ids, death)
		if err == nil {
			prior, err = pgx.CollectRows(rows, pgx.RowTo[int64])
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("record attempt starts: %w", err)
	}
	st.recorded = ids
	st.suspects = map[int64]bool{}
	if !st.solo {
		for _, id := range prior {
			st.suspects[id] = true
		}
	}
	for _, id := range ids {
		if !st.suspects[id] {
			st.forget = append(st.forget, id)
		}
	}
	return nil
}

// mayStart says whether the handler of message rowID may start now. The
// first handler of a claim always starts; after it, none starts once the
// claim's time budget is spent or in a solo claim, and a suspect never
// starts in a batch.
func (st *starts) mayStart(rowID int64) bool {
	switch {
	case st.suspects[rowID]:
		return false
	case st.started > 0 && (st.solo || time.Now().After(st.until)):
		return false
	}
	st.started++
	return true
}

// forgetStarts deletes the attempt starts of a claim that is abandoned
// while its process lives (a broken transaction, Stop): those runs did not
// kill the process. It runs before the rollback, so no other worker can
// take the messages in between and see them as suspects.
func (e *engine) forgetStarts(st *starts) {
	if len(st.forget) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := e.side.do(ctx, func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, e.sql.forgetStarts, st.forget)
		return err
	})
	if err != nil {
		// They stay suspects: each runs alone once, then all is as before.
		e.log.warn("inbox: could not clear attempt starts of an abandoned batch", "messages", len(st.forget), "error", err)
	}
}

// diedReason is the dead reason of a message that took the process down.
func diedReason(deaths int) error {
	return fmt.Errorf("process died during the handler %d times (running alone each time)", deaths)
}
