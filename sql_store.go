package inbox

import "strings"

// storeQueries are the statements of storing and cleaning up.
type storeQueries struct {
	store, cleanup string
}

func newStoreQueries(r *strings.Replacer) (q storeQueries) {
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
	//
	// Each message looks its stream up in a subquery of its own (LIMIT 1
	// keeps it one): joined, a generic plan made while inbox_streams was
	// small hashed the whole table for every batch as it grew
	// (plans_test.go).
	q.store = r.Replace(`
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
    LEFT JOIN LATERAL (
        SELECT s.next_seq FROM {schema}.inbox_streams s
        WHERE i.stream IS NOT NULL AND s.source = i.source AND s.stream = i.stream
        LIMIT 1
    ) s ON true
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
heads AS (` + upsertHeads(`
    SELECT x.source, x.stream, x.seq, x.topic, x.id, f.watermark
    FROM inserted x JOIN fated f ON f.source = x.source AND f.message_id = x.message_id
    WHERE x.state = 'pending' AND x.stream IS NOT NULL`) + `
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
WHERE (SELECT count(*) FROM notified) >= 0`)

	// Oldest first, along the done index: the scan stops at the batch's
	// end. Without the order the planner may walk the table from its
	// start, through every row still kept, for each batch.
	q.cleanup = r.Replace(`
DELETE FROM {schema}.inbox_messages WHERE id IN (
    SELECT id FROM {schema}.inbox_messages
    WHERE state = 'done' AND processed_at < now() - make_interval(secs => $1)
    ORDER BY processed_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED)`)
	return q
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
