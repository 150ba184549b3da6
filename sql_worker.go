package inbox

import "strings"

// workerQueries are the statements of claims, attempt starts and outcomes (claim.go, attempts.go, settle.go).
type workerQueries struct {
	claimSuspect, claimSuspectStream         string
	claimUnordered, claimStreams, loadStream string
	recordStarts, forgetStarts               string
	markDone, markDuplicate, markFailed      string
	markLate, updateStream                   string
	countBrokenAttempt                       string
}

func newWorkerQueries(r *strings.Replacer) (q workerQueries) {
	// Suspects that fewer deaths weigh on go first, so the innocent
	// batch-mates of a message that kills the process run before it
	// does again. SKIP LOCKED passes over the rows of live claims. The
	// outer SELECT sets the flag only for the row returned.
	//
	// Both claims walk the attempt starts (few: the live claims' and the
	// dead ones'), fewest deaths first, and look each message up by its id
	// alone, in a subquery per start: its other conditions are checked
	// outside (OFFSET 0 keeps them there), since any of them could let
	// the planner, on statistics that say nothing is pending, scan a
	// partial index of pending rows for the id instead, and every claim
	// then cost the backlog. The unordered claim locks the message in that
	// lookup, so a message whose start lingers but that cannot run now
	// (waiting for a retry, or finished) may stay locked, unrun, until
	// the claim commits. LIMIT 1 stops at the first row taken.
	q.claimSuspect = r.Replace(`
SELECT c.id, c.source, c.message_id, c.topic, c.headers, c.body, c.attempts, c.received_at, a.deaths,
       set_config('` + soloFlag + `', 'on', true) IS NOT NULL
FROM (SELECT id, deaths FROM {schema}.inbox_attempt_starts ORDER BY deaths, id) a
CROSS JOIN LATERAL (
    SELECT m.id, m.source, m.message_id, m.topic, m.headers, m.body, m.attempts, m.received_at, m.state, m.run_at
    FROM {schema}.inbox_messages m
    WHERE m.id = a.id AND m.stream IS NULL AND m.topic = ANY($1)
    OFFSET 0
    FOR UPDATE SKIP LOCKED
) c
WHERE c.state = 'pending' AND c.run_at <= now()
LIMIT 1`)

	// An ordered suspect runs only at its stream's watermark, under the
	// stream's lock like any ordered message.
	q.claimSuspectStream = r.Replace(`
SELECT c.source, c.stream, c.next_seq, c.in_gap, a.deaths,
       set_config('` + soloFlag + `', 'on', true) IS NOT NULL
FROM (SELECT id, deaths FROM {schema}.inbox_attempt_starts
      WHERE current_setting('` + soloFlag + `', true) IS DISTINCT FROM 'on'
      ORDER BY deaths, id) a
CROSS JOIN LATERAL (
    SELECT s.source, s.stream, s.next_seq, s.gap_since IS NOT NULL AS in_gap
    FROM (SELECT m.source, m.stream, m.seq, m.state, m.run_at
          FROM {schema}.inbox_messages m
          WHERE m.id = a.id AND m.stream IS NOT NULL AND m.topic = ANY($1)
          OFFSET 0) m
    JOIN {schema}.inbox_streams s ON s.source = m.source AND s.stream = m.stream AND s.next_seq = m.seq
    WHERE m.state = 'pending' AND m.run_at <= now() AND s.parked_at IS NULL
    FOR UPDATE OF s SKIP LOCKED
) c
LIMIT 1`)

	// Per handled topic, through that topic's range of the index, so
	// rows of topics without a handler here are never read, from the
	// topic's floor ($3, see claimfloor.go) on. Each topic
	// locks up to $1 rows; of those, the $1 due first are returned. The
	// others of a claim over several topics stay locked, unworked,
	// until it commits, and other workers pass over them meanwhile.
	q.claimUnordered = r.Replace(`
SELECT c.id, c.source, c.message_id, c.topic, c.headers, c.body, c.attempts, c.received_at, c.run_at
FROM unnest($2::text[], $3::timestamptz[]) AS t(topic, floor)
CROSS JOIN LATERAL (
    SELECT m.id, m.source, m.message_id, m.topic, m.headers, m.body, m.attempts, m.received_at, m.run_at
    FROM {schema}.inbox_messages m
    LEFT JOIN LATERAL (` + started("m.id") + `) s ON true
    WHERE m.state = 'pending' AND m.stream IS NULL AND m.topic = t.topic AND m.run_at >= t.floor AND m.run_at <= now()
      AND s.started IS NULL
      AND ` + notSolo + `
    ORDER BY m.run_at, m.id
    LIMIT $1
    FOR UPDATE OF m SKIP LOCKED
) c
ORDER BY c.run_at, c.id
LIMIT $1`)

	// A stream is ready when its head (heads.go) is due; streams are
	// found per handled topic through the heads' index, never through
	// their messages. Locking the stream row, not only message rows,
	// keeps one stream on one worker at a time. As for unordered
	// claims, streams of several topics may be locked and not returned.
	q.claimStreams = r.Replace(`
SELECT c.source, c.stream, c.next_seq, c.in_gap
FROM unnest($2::text[]) AS t(topic)
CROSS JOIN LATERAL (
    SELECT s.source, s.stream, s.next_seq, s.gap_since IS NOT NULL AS in_gap, h.ready_at
    FROM {schema}.inbox_stream_heads h
    JOIN {schema}.inbox_streams s ON s.source = h.source AND s.stream = h.stream
    LEFT JOIN LATERAL (` + started("h.head_id") + `) a ON true
    WHERE h.topic = t.topic AND h.ready_at <= now() AND s.parked_at IS NULL
      AND a.started IS NULL
      AND ` + notSolo + `
    ORDER BY h.ready_at
    LIMIT $1
    FOR UPDATE OF s SKIP LOCKED
) c
ORDER BY c.ready_at
LIMIT $1`)

	// $4 is the watermark, read under the stream's lock: only rows
	// below it look for a skipped range. The stream's index gives its
	// messages in sequence order, so the scan stops after $3 of them (and
	// any that share the last one's sequence number): a stream's backlog
	// is not read beyond what the claim takes.
	q.loadStream = r.Replace(`
SELECT m.id, m.message_id, m.topic, m.seq, m.headers, m.body, m.attempts, m.received_at, m.run_at <= now(),
       m.out_of_order, CASE WHEN m.seq < $4 THEN coalesce(` + lateArrival("m") + `, '') ELSE '' END
FROM (
    SELECT m.id, m.source, m.stream, m.message_id, m.topic, m.seq, m.headers, m.body, m.attempts, m.received_at,
           m.run_at, m.out_of_order
    FROM {schema}.inbox_messages m
    WHERE m.source = $1 AND m.stream = $2 AND m.state = 'pending' AND m.stream IS NOT NULL
    ORDER BY m.seq
    FETCH FIRST $3 ROWS WITH TIES
) m
ORDER BY m.seq, m.id`)

	// Autocommit, on a connection other than the claim's. The row must
	// outlive the client process, not a server crash, so the commit does
	// not wait for the WAL flush: synchronous_commit is read at commit
	// time, while the transaction-local value still holds. It returns
	// the candidates that were suspects already.
	q.recordStarts = r.Replace(`
WITH async AS (SELECT set_config('synchronous_commit', 'off', true) AS v),
prior AS (SELECT id FROM {schema}.inbox_attempt_starts WHERE id = ANY($1)),
started AS (
    INSERT INTO {schema}.inbox_attempt_starts AS a (id, deaths)
    SELECT u.id, $2 FROM unnest($1::bigint[]) AS u(id), async
    ORDER BY u.id
    ON CONFLICT (id) DO UPDATE SET deaths = a.deaths + excluded.deaths, started_at = now()
)
SELECT id FROM prior`)

	q.forgetStarts = r.Replace(`DELETE FROM {schema}.inbox_attempt_starts WHERE id = ANY($1)`)

	q.markLate = r.Replace(`
UPDATE {schema}.inbox_messages m SET state = 'dead', last_error = u.reason
FROM unnest($1::bigint[], $2::text[]) AS u(id, reason)
WHERE m.id = u.id`)

	q.markDone = r.Replace(`
UPDATE {schema}.inbox_messages
SET state = 'done', attempts = attempts + 1, processed_at = now(), body = NULL, last_error = NULL
WHERE id = ANY($1)`)

	q.markDuplicate = r.Replace(`
UPDATE {schema}.inbox_messages
SET state = 'done', processed_at = now(), body = NULL,
    last_error = 'duplicate: sequence already applied in this stream'
WHERE id = ANY($1)`)

	q.markFailed = r.Replace(`
UPDATE {schema}.inbox_messages
SET attempts = attempts + 1, last_error = $2, state = $3,
    run_at = now() + make_interval(secs => $4)
WHERE id = $1`)

	// Guarded by the attempt count, so it changes nothing if another
	// worker has handled the message meanwhile. A dead verdict ($5)
	// parks the message's stream if it still waits at that sequence.
	q.countBrokenAttempt = r.Replace(`
WITH counted AS (
    UPDATE {schema}.inbox_messages
    SET attempts = attempts + 1, last_error = $3, run_at = now() + make_interval(secs => $4),
        state = CASE WHEN $5 THEN 'dead' ELSE state END
    WHERE id = $1 AND attempts = $2 AND state = 'pending'
    RETURNING id, source, stream, seq
),
parked AS (
    UPDATE {schema}.inbox_streams s
    SET parked_at = now(), parked_reason = $6, parked_message_id = c.id, updated_at = now()
    FROM counted c
    WHERE $5 AND s.source = c.source AND s.stream = c.stream AND s.next_seq = c.seq
)
SELECT count(*) FROM counted`)

	// A gap's clock starts when the watermark reaches it: when the
	// watermark moved, the gap is a new one (next_seq is the old value).
	q.updateStream = r.Replace(`
UPDATE {schema}.inbox_streams
SET next_seq = $3,
    gap_since = CASE WHEN $4 THEN CASE WHEN next_seq = $3 THEN coalesce(gap_since, now()) ELSE now() END END,
    gap_reported = $4 AND next_seq = $3 AND gap_reported,
    parked_at = CASE WHEN $5 <> '' THEN now() ELSE parked_at END,
    parked_reason = CASE WHEN $5 <> '' THEN $5 ELSE parked_reason END,
    parked_message_id = CASE WHEN $5 <> '' THEN $6 ELSE parked_message_id END,
    updated_at = now()
WHERE source = $1 AND stream = $2`)
	return q
}

// started is a lateral subquery that says whether the message whose id is
// the expression id has an attempt start (see attempts.go), which the normal
// claims leave out. Not NOT EXISTS: planned generically (as a prepared
// statement is after five runs), on statistics that take the attempt starts
// for a page or two, the anti join that NOT EXISTS becomes either hashed
// them and sorted every due message after, or scanned all of them, a table
// that churns with every claim, for each due message (51 s for one claim in
// a soak). A subquery that refers to the message and stops at one row can
// only be run per message, and with sequential scans off (claimPlanning)
// only as a probe of the primary key.
func started(id string) string {
	return `SELECT true AS started FROM {schema}.inbox_attempt_starts a WHERE a.id = ` + id + ` LIMIT 1`
}

// notSolo is the condition the normal claims add: nothing when a suspect
// claim in the same transaction took a suspect.
const notSolo = `current_setting('` + soloFlag + `', true) IS DISTINCT FROM 'on'`

// soloFlag is a transaction-local setting that the suspect claims set when
// they take a suspect, so the normal claims that follow in the same
// pipeline take nothing and the suspect runs alone.
const soloFlag = "inbox.solo"
