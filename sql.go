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
	gapSkip, park                            string
	starts                                   startQueries
}

func newQueries(quotedSchema string) queries {
	r := strings.NewReplacer("{schema}", quotedSchema)
	return queries{
		starts: newStartQueries(r),

		// One statement, hence atomic without an explicit transaction:
		// create rows for new streams, then insert the messages that are
		// neither stored yet nor below their stream's watermark.
		store: r.Replace(`
WITH input AS (
    SELECT u.source, u.message_id, u.topic, NULLIF(u.stream, '') AS stream,
           CASE WHEN u.stream = '' THEN NULL ELSE u.seq END AS seq,
           u.headers::jsonb AS headers, u.body
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::bytea[])
        AS u(source, message_id, topic, stream, seq, headers, body)
),
new_streams AS (
    INSERT INTO {schema}.inbox_streams (source, stream, next_seq)
    SELECT DISTINCT i.source, i.stream, $8::bigint FROM input i
    WHERE i.stream IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM {schema}.inbox_streams s WHERE s.source = i.source AND s.stream = i.stream)
    ORDER BY 1, 2
    ON CONFLICT DO NOTHING
),
inserted AS (
    INSERT INTO {schema}.inbox_messages (source, message_id, topic, stream, seq, headers, body)
    SELECT i.source, i.message_id, i.topic, i.stream, i.seq, i.headers, i.body FROM input i
    WHERE i.stream IS NULL OR NOT EXISTS (
        SELECT 1 FROM {schema}.inbox_streams s
        WHERE s.source = i.source AND s.stream = i.stream AND s.next_seq > i.seq)
    ON CONFLICT (source, message_id) DO NOTHING
    RETURNING source, message_id
),
notified AS (
    SELECT pg_notify($9, '') FROM (SELECT 1 FROM inserted LIMIT 1) one WHERE $9 <> ''
)
SELECT source, message_id FROM inserted
WHERE (SELECT count(*) FROM notified) >= 0`),

		cleanup: r.Replace(`
DELETE FROM {schema}.inbox_messages WHERE id IN (
    SELECT id FROM {schema}.inbox_messages
    WHERE state = 'done' AND processed_at < now() - make_interval(secs => $1)
    LIMIT $2
    FOR UPDATE SKIP LOCKED)`),

		claimUnordered: r.Replace(`
SELECT id, source, message_id, topic, headers, body, attempts, received_at
FROM {schema}.inbox_messages
WHERE state = 'pending' AND stream IS NULL AND run_at <= now() AND topic = ANY($2)
  AND NOT EXISTS (SELECT 1 FROM {schema}.inbox_attempt_starts a WHERE a.id = inbox_messages.id)
  AND ` + notSolo + `
ORDER BY run_at, id
LIMIT $1
FOR UPDATE SKIP LOCKED`),

		// A stream is ready when a runnable pending message sits at (or, for
		// a late duplicate, below) its watermark. Locking the stream row, not
		// only message rows, keeps one stream on one worker at a time.
		claimStreams: r.Replace(`
SELECT s.source, s.stream, s.next_seq, s.gap_since IS NOT NULL
FROM {schema}.inbox_messages m
JOIN {schema}.inbox_streams s
  ON s.source = m.source AND s.stream = m.stream AND m.seq <= s.next_seq
WHERE m.state = 'pending' AND m.stream IS NOT NULL AND m.run_at <= now()
  AND m.topic = ANY($2) AND s.parked_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM {schema}.inbox_attempt_starts a WHERE a.id = m.id)
  AND ` + notSolo + `
ORDER BY m.run_at, m.id
LIMIT $1
FOR UPDATE OF s SKIP LOCKED`),

		loadStream: r.Replace(`
SELECT id, message_id, topic, seq, headers, body, attempts, received_at, run_at <= now()
FROM {schema}.inbox_messages
WHERE source = $1 AND stream = $2 AND state = 'pending' AND stream IS NOT NULL
ORDER BY seq, id
LIMIT $3`),

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

		updateStream: r.Replace(`
UPDATE {schema}.inbox_streams
SET next_seq = $3,
    gap_since = CASE WHEN $4 THEN coalesce(gap_since, now()) END,
    gap_reported = $4 AND gap_reported,
    parked_at = CASE WHEN $5 <> '' THEN now() ELSE parked_at END,
    parked_reason = CASE WHEN $5 <> '' THEN $5 ELSE parked_reason END,
    parked_message_id = CASE WHEN $5 <> '' THEN $6 ELSE parked_message_id END,
    updated_at = now()
WHERE source = $1 AND stream = $2`),

		findGaps: r.Replace(`
WITH heads AS (
    SELECT source, stream, min(seq) AS head
    FROM {schema}.inbox_messages
    WHERE state = 'pending' AND stream IS NOT NULL
    GROUP BY source, stream
)
SELECT s.source, s.stream, s.next_seq, h.head, s.gap_since,
       coalesce(s.gap_since < now() - make_interval(secs => $1), false), s.gap_reported
FROM {schema}.inbox_streams s
JOIN heads h ON h.source = s.source AND h.stream = s.stream
WHERE h.head > s.next_seq AND s.parked_at IS NULL
ORDER BY s.source, s.stream
LIMIT $2
FOR UPDATE OF s SKIP LOCKED`),

		gapStarted: r.Replace(`
UPDATE {schema}.inbox_streams SET gap_since = now(), updated_at = now()
WHERE source = $1 AND stream = $2 AND gap_since IS NULL`),

		gapReported: r.Replace(`
UPDATE {schema}.inbox_streams SET gap_reported = true
WHERE source = $1 AND stream = $2`),

		gapSkip: r.Replace(`
UPDATE {schema}.inbox_streams
SET skipped = skipped + ($3 - next_seq), last_skip = $4, next_seq = $3,
    gap_since = NULL, gap_reported = false, updated_at = now()
WHERE source = $1 AND stream = $2`),

		park: r.Replace(`
UPDATE {schema}.inbox_streams
SET parked_at = now(), parked_reason = $3, parked_message_id = $4, updated_at = now()
WHERE source = $1 AND stream = $2`),
	}
}
