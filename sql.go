package inbox

import "strings"

// queries holds the SQL of an Inbox with its schema filled in. Only the
// schema, validated and quoted, is ever spliced into SQL text.
type queries struct {
	store, cleanup                           string
	claimUnordered, claimStreams, loadStream string
	markDone, markDuplicate, markFailed      string
	updateStream, countBrokenAttempt         string
	findGaps, gapStarted, gapReported        string
	gapSkip, skipStream, park, parkFailed    string
	markLate, expireStreams                  string
	starts                                   startQueries
	heads                                    headQueries
}

// lateArrival is the reason a message of alias (with source, stream and
// seq) dies with when its sequence number lies in a skipped range, or NULL.
// Ranges do not overlap, so the one starting last at or below seq is the
// only candidate: one index probe, however many skips the stream has had.
func lateArrival(alias string) string {
	return strings.NewReplacer("{m}", alias).Replace(`(
        SELECT CASE WHEN k.to_seq >= {m}.seq
                    THEN format('arrived after sequence %s was skipped (%s at %s)', {m}.seq, k.how,
                                to_char(k.skipped_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')) END
        FROM {schema}.inbox_skips k
        WHERE k.source = {m}.source AND k.stream = {m}.stream AND k.from_seq <= {m}.seq
        ORDER BY k.from_seq DESC LIMIT 1)`)
}

// addSkipped adds the sequence numbers from next_seq to $4 (excluded) to the
// stream's skipped counter, saturating instead of overflowing.
const addSkipped = `least(skipped::numeric + ($4::bigint::numeric - next_seq), 9223372036854775807)::bigint`

// recordSkip records the skipped ranges that rows, a SELECT of (source,
// stream, from, to, how), return. Ranges start at the old watermark, which
// only moves forward; a conflict means the stream row was deleted and made
// again, and the newer range is the one that holds.
func recordSkip(rows string) string {
	return `INSERT INTO {schema}.inbox_skips (source, stream, from_seq, to_seq, how)
` + rows + `
ON CONFLICT (source, stream, from_seq) DO UPDATE
SET to_seq = excluded.to_seq, how = excluded.how, skipped_at = excluded.skipped_at`
}

func newQueries(quotedSchema string) queries {
	r := strings.NewReplacer("{schema}", quotedSchema)
	heads := newHeadQueries(r)
	return queries{
		starts:        newStartQueries(r),
		heads:         heads,
		expireStreams: newExpireStreams(r),

		// One statement, hence atomic without an explicit transaction:
		// insert the messages not stored yet. A sequence below its stream's
		// watermark is a duplicate, unless it lies in a skipped range: then
		// it was never applied and is kept, dead, saying so. Only such
		// messages read inbox_skips. The stream heads of its pending
		// arrivals are updated (heads.go), and a stream whose head row that
		// creates gets its inbox_streams row, at the watermark it was judged
		// by. Every stream has both rows or neither, and Store makes them
		// only under the head row's lock: that is what makes idle-stream
		// expiry safe against it (expiry.go). Until this statement has the
		// lock, a head row being expired is deleted with its stream, so
		// this statement then creates both again.
		store: r.Replace(`
WITH input AS (
    SELECT u.source, u.message_id, u.topic, NULLIF(u.stream, '') AS stream,
           CASE WHEN u.stream = '' THEN NULL ELSE u.seq END AS seq,
           u.headers::jsonb AS headers, u.body, u.ord
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::bytea[])
        WITH ORDINALITY AS u(source, message_id, topic, stream, seq, headers, body, ord)
),
fated AS (
    SELECT i.*, CASE
        WHEN i.stream IS NULL OR s.next_seq IS NULL OR i.seq >= s.next_seq THEN ''
        ELSE ` + lateArrival("i") + `
    END AS late, coalesce(s.next_seq, $8::bigint) AS watermark
    FROM input i
    LEFT JOIN {schema}.inbox_streams s ON s.source = i.source AND s.stream = i.stream
),
inserted AS (
    INSERT INTO {schema}.inbox_messages (source, message_id, topic, stream, seq, headers, body, state, last_error)
    SELECT f.source, f.message_id, f.topic, f.stream, f.seq, f.headers, f.body,
           CASE WHEN f.late = '' THEN 'pending' ELSE 'dead' END, NULLIF(f.late, '')
    FROM fated f
    WHERE f.late IS NOT NULL
    ORDER BY f.ord
    ON CONFLICT (source, message_id) DO NOTHING
    RETURNING id, source, message_id, topic, stream, seq, state
),
heads AS (` + strings.Replace(heads.upsert, "{arrivals}", `(
    SELECT x.source, x.stream, x.seq, x.topic, x.id, f.watermark
    FROM inserted x JOIN fated f ON f.source = x.source AND f.message_id = x.message_id
    WHERE x.state = 'pending' AND x.stream IS NOT NULL)`, 1) + `
),
new_streams AS (
    INSERT INTO {schema}.inbox_streams (source, stream, next_seq)
    SELECT h.source, h.stream, h.next_seq FROM heads h WHERE h.created
    ORDER BY 1, 2
    ON CONFLICT DO NOTHING
),
notified AS (
    SELECT pg_notify($9, '') FROM (SELECT 1 FROM inserted WHERE state = 'pending' LIMIT 1) one WHERE $9 <> ''
)
SELECT source, message_id, state = 'dead' FROM inserted
WHERE (SELECT count(*) FROM notified) >= 0`),

		cleanup: r.Replace(`
DELETE FROM {schema}.inbox_messages WHERE id IN (
    SELECT id FROM {schema}.inbox_messages
    WHERE state = 'done' AND processed_at < now() - make_interval(secs => $1)
    LIMIT $2
    FOR UPDATE SKIP LOCKED)`),

		// Per handled topic, through that topic's range of the index, so
		// rows of topics without a handler here are never read. Each topic
		// locks up to $1 rows; of those, the $1 due first are returned. The
		// others of a claim over several topics stay locked, unworked,
		// until it commits, and other workers pass over them meanwhile.
		claimUnordered: r.Replace(`
SELECT c.id, c.source, c.message_id, c.topic, c.headers, c.body, c.attempts, c.received_at
FROM unnest($2::text[]) AS t(topic)
CROSS JOIN LATERAL (
    SELECT m.id, m.source, m.message_id, m.topic, m.headers, m.body, m.attempts, m.received_at, m.run_at
    FROM {schema}.inbox_messages m
    WHERE m.state = 'pending' AND m.stream IS NULL AND m.topic = t.topic AND m.run_at <= now()
      AND NOT EXISTS (SELECT 1 FROM {schema}.inbox_attempt_starts a WHERE a.id = m.id)
      AND ` + notSolo + `
    ORDER BY m.run_at, m.id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
) c
ORDER BY c.run_at, c.id
LIMIT $1`),

		// A stream is ready when its head (heads.go) is due; streams are
		// found per handled topic through the heads' index, never through
		// their messages. Locking the stream row, not only message rows,
		// keeps one stream on one worker at a time. As for unordered
		// claims, streams of several topics may be locked and not returned.
		claimStreams: r.Replace(`
SELECT c.source, c.stream, c.next_seq, c.in_gap
FROM unnest($2::text[]) AS t(topic)
CROSS JOIN LATERAL (
    SELECT s.source, s.stream, s.next_seq, s.gap_since IS NOT NULL AS in_gap, h.ready_at
    FROM {schema}.inbox_stream_heads h
    JOIN {schema}.inbox_streams s ON s.source = h.source AND s.stream = h.stream
    WHERE h.topic = t.topic AND h.ready_at <= now() AND s.parked_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM {schema}.inbox_attempt_starts a WHERE a.id = h.head_id)
      AND ` + notSolo + `
    ORDER BY h.ready_at
    LIMIT $1
    FOR UPDATE OF s SKIP LOCKED
) c
ORDER BY c.ready_at
LIMIT $1`),

		// $4 is the watermark, read under the stream's lock: only rows
		// below it look for a skipped range.
		loadStream: r.Replace(`
SELECT m.id, m.message_id, m.topic, m.seq, m.headers, m.body, m.attempts, m.received_at, m.run_at <= now(),
       m.out_of_order, CASE WHEN m.seq < $4 THEN coalesce(` + lateArrival("m") + `, '') ELSE '' END
FROM {schema}.inbox_messages m
WHERE m.source = $1 AND m.stream = $2 AND m.state = 'pending' AND m.stream IS NOT NULL
ORDER BY m.seq, m.id
LIMIT $3`),

		markLate: r.Replace(`
UPDATE {schema}.inbox_messages m SET state = 'dead', last_error = u.reason
FROM unnest($1::bigint[], $2::text[]) AS u(id, reason)
WHERE m.id = u.id`),

		markDone: r.Replace(`
UPDATE {schema}.inbox_messages
SET state = 'done', attempts = attempts + 1, processed_at = now(), body = NULL, last_error = NULL
WHERE id = ANY($1)`),

		markDuplicate: r.Replace(`
UPDATE {schema}.inbox_messages
SET state = 'done', processed_at = now(), body = NULL,
    last_error = 'duplicate: sequence already applied in this stream'
WHERE id = ANY($1)`),

		markFailed: r.Replace(`
UPDATE {schema}.inbox_messages
SET attempts = attempts + 1, last_error = $2, state = $3,
    run_at = now() + make_interval(secs => $4)
WHERE id = $1`),

		// Guarded by the attempt count, so it changes nothing if another
		// worker has handled the message meanwhile. A dead verdict ($5)
		// parks the message's stream if it still waits at that sequence.
		countBrokenAttempt: r.Replace(`
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
SELECT count(*) FROM counted`),

		// A gap's clock starts when the watermark reaches it: when the
		// watermark moved, the gap is a new one (next_seq is the old value).
		updateStream: r.Replace(`
UPDATE {schema}.inbox_streams
SET next_seq = $3,
    gap_since = CASE WHEN $4 THEN CASE WHEN next_seq = $3 THEN coalesce(gap_since, now()) ELSE now() END END,
    gap_reported = $4 AND next_seq = $3 AND gap_reported,
    parked_at = CASE WHEN $5 <> '' THEN now() ELSE parked_at END,
    parked_reason = CASE WHEN $5 <> '' THEN $5 ELSE parked_reason END,
    parked_message_id = CASE WHEN $5 <> '' THEN $6 ELSE parked_message_id END,
    updated_at = now()
WHERE source = $1 AND stream = $2`),

		// Candidates come from the heads' gap index: unparked streams with
		// pending messages above the watermark and none at it. Each one's
		// lowest pending sequence number is one index probe; a candidate
		// without a gap has an out-of-date head row, which the sweep
		// rewrites.
		findGaps: r.Replace(`
SELECT s.source, s.stream, s.next_seq, p.head, s.gap_since,
       coalesce(s.gap_since < now() - make_interval(secs => $1), false), s.gap_reported
FROM {schema}.inbox_stream_heads h
JOIN {schema}.inbox_streams s ON s.source = h.source AND s.stream = h.stream
CROSS JOIN LATERAL (
    SELECT min(m.seq) AS head FROM {schema}.inbox_messages m
    WHERE m.source = s.source AND m.stream = s.stream AND m.state = 'pending' AND m.stream IS NOT NULL
) p
WHERE h.ready_at IS NULL AND NOT h.parked AND h.high_seq > h.next_seq AND s.parked_at IS NULL
ORDER BY h.source, h.stream
LIMIT $2
FOR UPDATE OF s SKIP LOCKED`),

		gapStarted: r.Replace(`
UPDATE {schema}.inbox_streams SET gap_since = now(), updated_at = now()
WHERE source = $1 AND stream = $2 AND gap_since IS NULL`),

		gapReported: r.Replace(`
UPDATE {schema}.inbox_streams SET gap_reported = true
WHERE source = $1 AND stream = $2`),

		// $3..$4-1 is skipped: the stream moves to $4 and records the range.
		gapSkip: r.Replace(`
WITH moved AS (
    UPDATE {schema}.inbox_streams
    SET skipped = ` + addSkipped + `, last_skip = $5, next_seq = $4,
        gap_since = NULL, gap_reported = false, updated_at = now()
    WHERE source = $1 AND stream = $2 AND next_seq = $3
    RETURNING source, stream
)
` + recordSkip(`SELECT source, stream, $3, $4 - 1, 'gap timeout' FROM moved`)),

		// An operator's skip: like gapSkip, and it unparks the stream.
		skipStream: r.Replace(`
WITH moved AS (
    UPDATE {schema}.inbox_streams
    SET skipped = ` + addSkipped + `, last_skip = $5, next_seq = $4,
        parked_at = NULL, parked_reason = NULL, parked_message_id = NULL,
        gap_since = NULL, gap_reported = false, updated_at = now()
    WHERE source = $1 AND stream = $2 AND next_seq = $3
    RETURNING source, stream
)
` + recordSkip(`SELECT source, stream, $3, $4 - 1, 'operator skip' FROM moved`)),

		parkFailed: r.Replace(`
UPDATE {schema}.inbox_streams
SET parked_at = now(), parked_reason = $3, updated_at = now()
WHERE source = $1 AND stream = $2 AND parked_at IS NULL`),

		park: r.Replace(`
UPDATE {schema}.inbox_streams
SET parked_at = now(), parked_reason = $3, parked_message_id = $4, updated_at = now()
WHERE source = $1 AND stream = $2`),
	}
}
