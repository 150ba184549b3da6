package inbox

import (
	"context"
	"fmt"
	"strings"
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
// suspect. Normal claims leave suspects out; a claim takes at most one
// suspect, alone, and runs it while no other worker of the Inbox runs a
// handler (see gate.go), so that if it kills the process again nothing else
// is lost with it and the death is its own. Each such run that never
// finishes counts as a death, and
// after MaxAttempts deaths the message is dead without running again (an
// ordered one parks its stream, as dead messages do). A death in a batch
// counts for no one, since nobody can tell which handler caused it.

// soloFlag is a transaction-local setting that the suspect claims set when
// they take a suspect, so the normal claims that follow in the same
// pipeline take nothing and the suspect runs alone.
const soloFlag = "inbox.solo"

type startQueries struct {
	claimSuspect, claimSuspectStream string
	record, forget                   string
}

func newStartQueries(r *strings.Replacer) startQueries {
	return startQueries{
		// Suspects that fewer deaths weigh on go first, so the innocent
		// batch-mates of a message that kills the process run before it
		// does again. SKIP LOCKED passes over the rows of live claims. The
		// outer SELECT sets the flag only for the row returned. The
		// messages are found by their ids, from the (usually empty) starts
		// table: a plain join may be planned as a scan of all messages.
		claimSuspect: r.Replace(`
SELECT c.id, c.source, c.message_id, c.topic, c.headers, c.body, c.attempts, c.received_at, c.deaths,
       set_config('` + soloFlag + `', 'on', true) IS NOT NULL
FROM (
    SELECT m.id, m.source, m.message_id, m.topic, m.headers, m.body, m.attempts, m.received_at, a.deaths
    FROM {schema}.inbox_messages m
    JOIN {schema}.inbox_attempt_starts a ON a.id = m.id
    WHERE m.id = ANY (ARRAY(SELECT id FROM {schema}.inbox_attempt_starts)) AND m.state = 'pending' AND m.stream IS NULL AND m.run_at <= now() AND m.topic = ANY($1)
    ORDER BY a.deaths, m.run_at, m.id
    LIMIT 1
    FOR UPDATE OF m SKIP LOCKED
) c`),

		// An ordered suspect runs only at its stream's watermark, under the
		// stream's lock like any ordered message.
		claimSuspectStream: r.Replace(`
SELECT c.source, c.stream, c.next_seq, c.in_gap, c.deaths,
       set_config('` + soloFlag + `', 'on', true) IS NOT NULL
FROM (
    SELECT s.source, s.stream, s.next_seq, s.gap_since IS NOT NULL AS in_gap, a.deaths
    FROM {schema}.inbox_messages m
    JOIN {schema}.inbox_attempt_starts a ON a.id = m.id
    JOIN {schema}.inbox_streams s ON s.source = m.source AND s.stream = m.stream AND s.next_seq = m.seq
    WHERE m.id = ANY (ARRAY(SELECT id FROM {schema}.inbox_attempt_starts)) AND m.state = 'pending' AND m.stream IS NOT NULL AND m.run_at <= now() AND m.topic = ANY($1)
      AND s.parked_at IS NULL AND current_setting('` + soloFlag + `', true) IS DISTINCT FROM 'on'
    ORDER BY a.deaths, m.run_at, m.id
    LIMIT 1
    FOR UPDATE OF s SKIP LOCKED
) c`),

		// Autocommit, on a connection other than the claim's. The row must
		// outlive the client process, not a server crash, so the commit does
		// not wait for the WAL flush: synchronous_commit is read at commit
		// time, while the transaction-local value still holds. It returns
		// the candidates that were suspects already.
		record: r.Replace(`
WITH async AS (SELECT set_config('synchronous_commit', 'off', true) AS v),
prior AS (SELECT id FROM {schema}.inbox_attempt_starts WHERE id = ANY($1)),
started AS (
    INSERT INTO {schema}.inbox_attempt_starts AS a (id, deaths)
    SELECT u.id, $2 FROM unnest($1::bigint[]) AS u(id), async
    ORDER BY u.id
    ON CONFLICT (id) DO UPDATE SET deaths = a.deaths + excluded.deaths, started_at = now()
)
SELECT id FROM prior`),

		forget: r.Replace(`DELETE FROM {schema}.inbox_attempt_starts WHERE id = ANY($1)`),
	}
}

// notSolo is the condition the normal claims add: nothing when a suspect
// claim in the same transaction took a suspect.
const notSolo = `current_setting('` + soloFlag + `', true) IS DISTINCT FROM 'on'`

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

// scanSuspect reads a row of claimSuspect.
func scanSuspect(row pgx.CollectableRow) (*Message, error) {
	m := &Message{}
	var headers map[string]string
	var flag bool
	err := row.Scan(&m.RowID, &m.Source, &m.ID, &m.Topic, &headers, &m.Body, &m.Attempt, &m.ReceivedAt, &m.deaths, &flag)
	m.Headers = headers
	m.Attempt++
	return m, err
}

// candidates lists the messages of c whose handlers may run, in the order
// they would: every unordered one, and each stream's consecutive ready run
// from its watermark (only the head when the claim is solo).
func (in *Inbox) candidates(c *claim) []int64 {
	var ids []int64
	for _, m := range c.unordered {
		ids = append(ids, m.RowID)
	}
	for _, s := range c.streams {
		next := s.nextSeq
		for _, m := range s.msgs {
			if m.Seq < next {
				// An operator's out-of-order replay runs below the watermark.
				if m.outOfOrder && m.ready && in.handler(m.Topic) != nil && !c.starts.solo {
					ids = append(ids, m.RowID)
				}
				continue
			}
			if m.Seq > next || !m.ready || in.handler(m.Topic) == nil {
				break
			}
			ids = append(ids, m.RowID)
			next++
			if c.starts.solo {
				break
			}
		}
	}
	return ids
}

// recordStarts writes the attempt starts of c's candidates before any of
// its handlers runs. A solo run counts a death in advance: the outcome's
// transaction deletes it if the run finishes.
func (in *Inbox) recordStarts(ctx context.Context, c *claim) error {
	st := &c.starts
	ids := in.candidates(c)
	if st.solo {
		for _, id := range ids {
			if st.deaths[id] >= in.cfg.MaxAttempts {
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
	err := in.side.do(ctx, func(conn *pgx.Conn) error {
		rows, err := conn.Query(ctx, in.sql.starts.record, ids, death)
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
func (in *Inbox) forgetStarts(st *starts) {
	if len(st.forget) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := in.side.do(ctx, func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, in.sql.starts.forget, st.forget)
		return err
	})
	if err != nil {
		// They stay suspects: each runs alone once, then all is as before.
		in.log.warn("inbox: could not clear attempt starts of an abandoned claim", "messages", len(st.forget), "error", err)
	}
}

// diedReason is the dead reason of a message that took the process down.
func diedReason(deaths int) error {
	return fmt.Errorf("process died during the handler %d times (running alone each time)", deaths)
}
