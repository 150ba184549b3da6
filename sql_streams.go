package inbox

import "strings"

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

// streamQueries are the statements of gaps, skips and parks (ordering.go),
// the operator's view of streams (admin_streams.go), and idle-stream expiry
// (expiry.go).
type streamQueries struct {
	findGaps, gapStarted, gapReported                 string
	gapSkip, skipStream, park, parkFailed             string
	lockStream, pendingHead, skipMessage              string
	requeueParked, resumeStream                       string
	listStreams, streamInfo, streamDetail             string
	pageParkedStreams, pageGapStreams, deepestStreams string
	expireStreams                                     string
}

func newStreamQueries(r *strings.Replacer) (q streamQueries) {
	// Candidates come from the heads' gap index: unparked streams with
	// pending messages above the watermark and none at it. Each one's
	// lowest pending sequence number is one index probe; a candidate
	// without a gap has an out-of-date head row, which the sweep
	// rewrites.
	q.findGaps = r.Replace(`
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
FOR UPDATE OF s SKIP LOCKED`)

	q.gapStarted = r.Replace(`
UPDATE {schema}.inbox_streams SET gap_since = now(), updated_at = now()
WHERE source = $1 AND stream = $2 AND gap_since IS NULL`)

	q.gapReported = r.Replace(`
UPDATE {schema}.inbox_streams SET gap_reported = true
WHERE source = $1 AND stream = $2`)

	// $3..$4-1 is skipped: the stream moves to $4 and records the range.
	q.gapSkip = r.Replace(`
WITH moved AS (
    UPDATE {schema}.inbox_streams
    SET skipped = ` + addSkipped + `, last_skip = $5, next_seq = $4,
        gap_since = NULL, gap_reported = false, updated_at = now()
    WHERE source = $1 AND stream = $2 AND next_seq = $3
    RETURNING source, stream
)
` + recordSkip(`SELECT source, stream, $3, $4 - 1, 'gap timeout' FROM moved`))

	// An operator's skip: like gapSkip, and it unparks the stream.
	q.skipStream = r.Replace(`
WITH moved AS (
    UPDATE {schema}.inbox_streams
    SET skipped = ` + addSkipped + `, last_skip = $5, next_seq = $4,
        parked_at = NULL, parked_reason = NULL, parked_message_id = NULL,
        gap_since = NULL, gap_reported = false, updated_at = now()
    WHERE source = $1 AND stream = $2 AND next_seq = $3
    RETURNING source, stream
)
` + recordSkip(`SELECT source, stream, $3, $4 - 1, 'operator skip' FROM moved`))

	q.parkFailed = r.Replace(`
UPDATE {schema}.inbox_streams
SET parked_at = now(), parked_reason = $3, updated_at = now()
WHERE source = $1 AND stream = $2 AND parked_at IS NULL`)

	q.park = r.Replace(`
UPDATE {schema}.inbox_streams
SET parked_at = now(), parked_reason = $3, parked_message_id = $4, updated_at = now()
WHERE source = $1 AND stream = $2`)

	// The operator's view and actions (streams.go, streampages.go). An
	// action holds the stream's row lock (lockStream), which waits for a
	// worker that is processing the stream to commit.
	q.lockStream = r.Replace(`
SELECT next_seq, parked_message_id FROM {schema}.inbox_streams
WHERE source = $1 AND stream = $2 FOR UPDATE`)

	q.requeueParked = r.Replace(`
UPDATE {schema}.inbox_messages SET state = 'pending', attempts = 0, run_at = now()
WHERE id = $1 AND state = 'dead'`)

	q.resumeStream = r.Replace(`
UPDATE {schema}.inbox_streams
SET parked_at = NULL, parked_reason = NULL, parked_message_id = NULL,
    gap_since = NULL, gap_reported = false, updated_at = now()
WHERE source = $1 AND stream = $2`)

	q.pendingHead = r.Replace(`
SELECT min(seq) FROM {schema}.inbox_messages
WHERE source = $1 AND stream = $2 AND state = 'pending' AND stream IS NOT NULL AND seq >= $3`)

	q.skipMessage = r.Replace(`
UPDATE {schema}.inbox_messages
SET state = 'dead', last_error = coalesce(last_error || E'\n', '') || 'skipped by operator'
WHERE source = $1 AND stream = $2 AND seq = $3 AND state IN ('pending', 'dead')`)

	q.listStreams = r.Replace(`
SELECT s.source, s.stream, s.next_seq, coalesce(p.pending, 0), coalesce(p.head, 0), p.oldest,
       s.gap_since, s.parked_at, coalesce(s.parked_reason, ''), coalesce(s.parked_message_id, 0),
       s.skipped, coalesce(s.last_skip, '')
FROM {schema}.inbox_streams s
LEFT JOIN LATERAL (
    SELECT count(*) AS pending, min(seq) AS head, min(received_at) AS oldest
    FROM {schema}.inbox_messages m
    WHERE m.source = s.source AND m.stream = s.stream AND m.state = 'pending' AND m.stream IS NOT NULL
) p ON true
WHERE ($1 = '' OR s.source = $1)
  AND (NOT $2 OR s.parked_at IS NOT NULL)
  AND (NOT $3 OR s.gap_since IS NOT NULL)
  AND ($4 OR $2 OR $3 OR s.parked_at IS NOT NULL OR s.gap_since IS NOT NULL OR coalesce(p.pending, 0) > 0)
ORDER BY s.parked_at NULLS LAST, s.gap_since NULLS LAST, p.oldest NULLS LAST, s.source, s.stream
LIMIT $5`)

	cols := r.Replace(streamPageColumns)
	q.streamInfo = `SELECT ` + cols + r.Replace(`
FROM {schema}.inbox_streams s WHERE s.source = $2 AND s.stream = $3`)

	q.streamDetail = `SELECT ` + cols + r.Replace(`,
    coalesce((SELECT max(m.seq) FROM {schema}.inbox_messages m WHERE m.source = s.source
        AND m.stream = s.stream AND m.state = 'pending' AND m.stream IS NOT NULL), 0),
    (SELECT coalesce(array_agg(h.id ORDER BY h.seq), '{}') FROM (SELECT m.id, m.seq FROM {schema}.inbox_messages m
        WHERE m.source = s.source AND m.stream = s.stream AND m.state = 'pending' AND m.stream IS NOT NULL
        ORDER BY m.seq LIMIT 20) h)
FROM {schema}.inbox_streams s WHERE s.source = $2 AND s.stream = $3`)

	page := func(cond string) string {
		return `SELECT ` + cols + r.Replace(`
FROM {schema}.inbox_streams s
WHERE `+cond+` AND (s.source, s.stream) > ($2, $3)
ORDER BY s.source, s.stream LIMIT $4`)
	}
	q.pageParkedStreams = page(`s.parked_at IS NOT NULL`)
	q.pageGapStreams = page(`s.gap_since IS NOT NULL AND s.parked_at IS NULL`)

	q.deepestStreams = r.Replace(`
WITH heads AS (
    SELECT DISTINCT h.source, h.stream FROM (
        SELECT m.source, m.stream FROM {schema}.inbox_messages m
        WHERE m.state = 'pending' AND m.stream IS NOT NULL AND m.topic <> '' -- the views' index (migration 010)
        ORDER BY m.run_at, m.id LIMIT $2) h
)
SELECT `) + cols + r.Replace(`
FROM heads h JOIN {schema}.inbox_streams s ON s.source = h.source AND s.stream = h.stream
ORDER BY 4 DESC, 1, 2 LIMIT $3`)

	// One window of idle-stream expiry (expiry.go): $1, $2 the key the
	// last window ended at, $3 the window's size, $4 the idle time in
	// seconds. It returns how many streams the window held, the last
	// one's key, and how many it expired.
	q.expireStreams = r.Replace(`
WITH win AS (
    SELECT s.source, s.stream FROM {schema}.inbox_streams s
    WHERE (s.source, s.stream) > ($1::text, $2::text)
    ORDER BY s.source, s.stream
    LIMIT $3
),
idle AS (
    SELECT s.source, s.stream FROM {schema}.inbox_streams s
    JOIN win w ON w.source = s.source AND w.stream = s.stream
    WHERE s.parked_at IS NULL AND s.updated_at < now() - make_interval(secs => $4)
    ORDER BY s.source, s.stream
    FOR UPDATE OF s SKIP LOCKED
),
quiet AS (
    SELECT h.source, h.stream FROM {schema}.inbox_stream_heads h
    JOIN idle i ON i.source = h.source AND i.stream = h.stream
    WHERE h.low_seq IS NULL AND NOT h.parked
    ORDER BY h.source, h.stream
    FOR UPDATE OF h SKIP LOCKED
),
heads_gone AS (
    DELETE FROM {schema}.inbox_stream_heads h USING quiet q
    WHERE h.source = q.source AND h.stream = q.stream
    RETURNING h.source, h.stream
),
streams_gone AS (
    DELETE FROM {schema}.inbox_streams s USING heads_gone g
    WHERE s.source = g.source AND s.stream = g.stream
    RETURNING s.source, s.stream
),
skips_gone AS (
    DELETE FROM {schema}.inbox_skips k USING streams_gone g
    WHERE k.source = g.source AND k.stream = g.stream
)
SELECT (SELECT count(*) FROM win), coalesce(l.source, ''), coalesce(l.stream, ''),
       (SELECT count(*) FROM streams_gone)
FROM (SELECT 1) one
LEFT JOIN (SELECT source, stream FROM win ORDER BY source DESC, stream DESC LIMIT 1) l ON true`)
	return q
}

// streamPageColumns reads a StreamInfo (scanStreamInfo) of stream row s,
// its pending count capped at $1.
const streamPageColumns = `s.source, s.stream, s.next_seq,
    (SELECT count(*) FROM (SELECT 1 FROM {schema}.inbox_messages m WHERE m.source = s.source AND m.stream = s.stream
        AND m.state = 'pending' AND m.stream IS NOT NULL LIMIT $1) x),
    coalesce((SELECT min(m.seq) FROM {schema}.inbox_messages m WHERE m.source = s.source AND m.stream = s.stream
        AND m.state = 'pending' AND m.stream IS NOT NULL), 0),
    (SELECT min(m.received_at) FROM {schema}.inbox_messages m WHERE m.source = s.source AND m.stream = s.stream
        AND m.state = 'pending' AND m.stream IS NOT NULL),
    s.gap_since, s.parked_at, coalesce(s.parked_reason, ''), coalesce(s.parked_message_id, 0),
    s.skipped, coalesce(s.last_skip, '')`
