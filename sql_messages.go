package inbox

import "strings"

// messageColumns reads a MessageInfo (scanMessageInfo).
const messageColumns = `id, source, message_id, topic, coalesce(stream, ''), coalesce(seq, 0), state, attempts,
	coalesce(last_error, ''), headers, coalesce(length(body), 0), received_at, run_at, processed_at, out_of_order`

// messageWhere is MessageFilter's conditions, on $1..$7 (MessageFilter.args).
const messageWhere = `($1 = '' OR state = $1) AND ($2 = '' OR topic = $2)
	AND ($3 = '' OR strpos(lower(coalesce(last_error, '')), lower($3)) > 0)
	AND ($4::timestamptz IS NULL OR received_at >= $4) AND ($5::timestamptz IS NULL OR received_at < $5)
	AND ($6::bigint = 0 OR id > $6) AND ($7::bigint[] IS NULL OR id = ANY($7))`

// deadWhere is DeadQuery's conditions, on $1..$6 (DeadQuery.args).
const deadWhere = `state = 'dead' AND ($1 = '' OR topic = $1)
	AND ($2 = '' OR strpos(lower(coalesce(last_error, '')), lower($2)) > 0)
	AND ($3::timestamptz IS NULL OR received_at >= $3) AND ($4::timestamptz IS NULL OR received_at < $4)
	AND ($5 = '' OR ` + fingerprintSQL + ` = $5)
	AND ($6::bigint = 0 OR id < $6)`

// errorPatternSQL masks the variable parts of a last error, in SQL so that
// grouping, filtering and acting on a group all agree: UUIDs, then runs of
// hex digits that contain a digit (hashes, trace IDs), then numbers. The
// text is cut first so the cost per row is bounded.
const errorPatternSQL = `regexp_replace(regexp_replace(regexp_replace(
	left(coalesce(last_error, ''), 500),
	'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'gi'),
	'\m(?=[a-f]*[0-9])[0-9a-f]{8,}\M', '<hex>', 'gi'),
	'[0-9]+', '#', 'g')`

// fingerprintSQL is the short key of a pattern, fit for a URL.
const fingerprintSQL = `left(md5(` + errorPatternSQL + `), 12)`

// messageQueries are the statements of the operator's view of messages and actions on dead ones (admin_messages.go, admin_dead.go, activity.go).
type messageQueries struct {
	listMessages, getMessage, messageBody        string
	lockDead, deleteMessages                     string
	belowWatermark, unparkByMessage, requeueDead string
	deadGroups, listDead, deadBatch, activity    string
}

func newMessageQueries(r *strings.Replacer) (q messageQueries) {
	q.listMessages = r.Replace(`SELECT ` + messageColumns + ` FROM {schema}.inbox_messages
WHERE ` + messageWhere + ` ORDER BY id LIMIT $8`)

	q.getMessage = r.Replace(`SELECT ` + messageColumns + ` FROM {schema}.inbox_messages WHERE id = $1`)

	q.messageBody = r.Replace(`SELECT substring(body FROM 1 FOR $2), coalesce(length(body), 0)
FROM {schema}.inbox_messages WHERE id = $1`)

	// $8 NULL: no limit.
	q.lockDead = r.Replace(`SELECT id FROM {schema}.inbox_messages
WHERE ` + messageWhere + ` ORDER BY id LIMIT $8 FOR UPDATE`)

	q.deleteMessages = r.Replace(`DELETE FROM {schema}.inbox_messages WHERE id = ANY($1)`)

	q.belowWatermark = r.Replace(`
SELECT m.id, m.source, m.stream, m.seq, s.next_seq
FROM {schema}.inbox_messages m
JOIN {schema}.inbox_streams s ON s.source = m.source AND s.stream = m.stream
WHERE m.id = ANY($1) AND m.seq < s.next_seq
ORDER BY m.id`)

	q.unparkByMessage = r.Replace(`
UPDATE {schema}.inbox_streams
SET parked_at = NULL, parked_reason = NULL, parked_message_id = NULL, updated_at = now()
WHERE parked_message_id = ANY($1)`)

	// The out-of-order mark ($2) stays on the row once it is handled: the
	// record that it ran behind its stream's watermark. It returns the
	// streams whose heads the requeue changes.
	q.requeueDead = r.Replace(`
UPDATE {schema}.inbox_messages
SET state = 'pending', attempts = 0, run_at = now(), out_of_order = out_of_order OR id = ANY($2)
WHERE id = ANY($1)
RETURNING source, coalesce(stream, '')`)

	q.deadGroups = r.Replace(`
WITH scanned AS (
    SELECT id, topic, received_at, ` + errorPatternSQL + ` AS pattern
    FROM {schema}.inbox_messages WHERE ` + deadWhere + `
    ORDER BY id DESC LIMIT $7
), groups AS (
    SELECT pattern, count(*) AS n, max(id) AS newest, min(received_at) AS first, max(received_at) AS last,
           (array_agg(DISTINCT topic ORDER BY topic))[1:10] AS topics
    FROM scanned GROUP BY pattern
)
SELECT left(md5(pattern), 12), pattern, n, newest, first, last, topics, (SELECT count(*) FROM scanned)
FROM groups ORDER BY n DESC, pattern LIMIT $8`)

	q.listDead = r.Replace(`SELECT id FROM {schema}.inbox_messages WHERE ` + deadWhere + `
ORDER BY id DESC LIMIT $7`)

	q.deadBatch = r.Replace(`SELECT id FROM {schema}.inbox_messages WHERE ` + deadWhere + `
  AND id > $7 ORDER BY id LIMIT $8`)

	q.activity = r.Replace(`
WITH recent AS (
    SELECT processed_at FROM {schema}.inbox_messages
    WHERE state = 'done' AND processed_at >= date_trunc('minute', now()) - make_interval(mins => $1 - 1)
    ORDER BY processed_at DESC LIMIT $2
)
SELECT now(), (extract(epoch FROM date_trunc('minute', now()) - date_trunc('minute', processed_at)) / 60)::int, count(*),
       sum(count(*)) OVER ()
FROM recent GROUP BY 2 ORDER BY 2`)
	return q
}
