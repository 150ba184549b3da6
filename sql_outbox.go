package inbox

import (
	"strings"

	"github.com/inboxkit/inbox/internal/sqlident"
)

// outboxQueries holds every statement of an Outbox, built once with its
// schema filled in, as queries does for an Inbox (sql.go).
type outboxQueries struct {
	enqueue, enqueueUnordered                    string
	claim, markSent, markFailed, cleanup         string
	stats, list, lockDead, retryDead, deleteDead string
	listen                                       string
}

func newOutboxQueries(schema string) (q outboxQueries) {
	r := strings.NewReplacer("{schema}", sqlident.Quote(schema))
	// One statement: drop IDs already in the outbox, take the streams'
	// next numbers (the counter row stays locked until the caller's
	// commit, which serialises enqueuers of one stream in commit order),
	// insert, and NOTIFY relays at commit.
	q.enqueue = r.Replace(enqueueInput + `,
fresh AS (
    SELECT i.*, row_number() OVER (PARTITION BY i.stream ORDER BY i.ord) AS k,
           count(*) OVER (PARTITION BY i.stream) AS n
    FROM input i
    WHERE ` + enqueueIsNew + `
),
counters AS (
    INSERT INTO {schema}.outbox_streams AS s (stream, last_seq)
    SELECT stream, max(n) FROM fresh WHERE stream <> '' GROUP BY stream ORDER BY stream
    ON CONFLICT (stream) DO UPDATE SET last_seq = s.last_seq + excluded.last_seq, updated_at = now()
    RETURNING stream, last_seq
),
inserted AS (
    INSERT INTO {schema}.outbox_messages
        (message_id, destination, exchange, routing_key, type, content_type, stream, seq, headers, body)
    SELECT f.message_id, f.destination, f.exchange, f.routing_key, f.type, f.content_type,
           NULLIF(f.stream, ''), c.last_seq - f.n + f.k, f.headers::jsonb, f.body
    FROM fresh f LEFT JOIN counters c ON c.stream = f.stream
    ORDER BY f.ord
    RETURNING message_id, coalesce(seq, 0)
),` + enqueueNotify)

	// The same for messages none of which has a stream (the usual
	// follow-up): no numbering, no counters, about a third less of the
	// server's time per call. The arguments are the same; the streams
	// ($7, all empty) are read with the input and left unused.
	q.enqueueUnordered = r.Replace(enqueueInput + `,
inserted AS (
    INSERT INTO {schema}.outbox_messages
        (message_id, destination, exchange, routing_key, type, content_type, headers, body)
    SELECT i.message_id, i.destination, i.exchange, i.routing_key, i.type, i.content_type, i.headers::jsonb, i.body
    FROM input i
    WHERE ` + enqueueIsNew + `
    ORDER BY i.ord
    RETURNING message_id, 0::bigint
),` + enqueueNotify)

	// A stream's message is claimable only when every earlier one is
	// sent: while a relay holds message n (locked, in flight), n+1 is not
	// a head, so no relay publishes it before n is confirmed and marked.
	// A dead message holds its stream back until retried or deleted.
	q.claim = r.Replace(`
SELECT id, message_id, exchange, routing_key, type, content_type, coalesce(stream, ''), coalesce(seq, 0),
       headers, body, attempts, created_at
FROM {schema}.outbox_messages m
WHERE m.state = 'pending' AND m.run_at <= now()
  AND (m.stream IS NULL OR NOT EXISTS (
      SELECT 1 FROM {schema}.outbox_messages p
      WHERE p.stream = m.stream AND p.seq < m.seq AND p.state <> 'sent'))
ORDER BY m.id
LIMIT $1
FOR UPDATE SKIP LOCKED`)

	q.markSent = r.Replace(`
UPDATE {schema}.outbox_messages
SET state = 'sent', sent_at = now(), attempts = attempts + 1, body = NULL, last_error = NULL
WHERE id = ANY($1)`)

	q.markFailed = r.Replace(`
UPDATE {schema}.outbox_messages
SET attempts = attempts + 1, last_error = $2, state = $3, run_at = now() + make_interval(secs => $4)
WHERE id = $1 AND state = 'pending'`)

	q.cleanup = r.Replace(`
DELETE FROM {schema}.outbox_messages WHERE id IN (
    SELECT id FROM {schema}.outbox_messages
    WHERE state = 'sent' AND sent_at < now() - make_interval(secs => $1)
    ORDER BY sent_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED)`)

	// Each figure reads an index range, counts capped at $1.
	q.stats = r.Replace(`
SELECT now(),
    (SELECT count(*) FROM (SELECT 1 FROM {schema}.outbox_messages WHERE state = 'pending' LIMIT $1) p),
    coalesce((SELECT now() - created_at FROM {schema}.outbox_messages WHERE state = 'pending' ORDER BY id LIMIT 1), '0'),
    (SELECT count(*) FROM (SELECT 1 FROM {schema}.outbox_messages
        WHERE state = 'sent' AND sent_at > now() - interval '1 minute' LIMIT $1) s),
    (SELECT count(*) FROM (SELECT 1 FROM {schema}.outbox_messages WHERE state = 'dead' LIMIT $1) d)`)

	q.list = r.Replace(`
SELECT id, message_id, destination, exchange, routing_key, type,
       coalesce(stream, ''), coalesce(seq, 0), state, attempts, coalesce(last_error, ''), headers,
       coalesce(length(body), 0), created_at, run_at, sent_at
FROM {schema}.outbox_messages
WHERE ($1 = '' OR state = $1) AND id > $2 AND ($3::bigint[] IS NULL OR id = ANY($3))
ORDER BY id LIMIT $4`)

	// $3 NULL: no limit.
	q.lockDead = r.Replace(`
SELECT id FROM {schema}.outbox_messages
WHERE state = 'dead' AND id > $1 AND ($2::bigint[] IS NULL OR id = ANY($2))
ORDER BY id LIMIT $3 FOR UPDATE`)

	q.retryDead = r.Replace(`
UPDATE {schema}.outbox_messages SET state = 'pending', attempts = 0, run_at = now() WHERE id = ANY($1)`)

	q.deleteDead = r.Replace(`DELETE FROM {schema}.outbox_messages WHERE id = ANY($1)`)

	q.listen = "LISTEN " + sqlident.Quote(OutboxNotifyChannel(schema))
	return q
}

// The parts of the enqueue statements, for their arguments: message IDs,
// destinations, exchanges, routing keys, types, content types, streams
// (empty: none), headers (JSON), bodies, the NOTIFY channel (empty: none).
const (
	enqueueInput = `
WITH input AS (
    SELECT u.*
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::bytea[])
        WITH ORDINALITY AS u(message_id, destination, exchange, routing_key, type, content_type, stream, headers, body, ord)
)`
	// The ID test is a scalar subquery, not NOT EXISTS: the planner may
	// turn NOT EXISTS into a hash anti join that reads the whole table,
	// the cheaper plan while the table is new and small, and a prepared
	// statement keeps that plan (its generic one) as the table grows until
	// an ANALYZE replans it. A scalar subquery is never made a join: each
	// message probes the ID's unique index (plans_test.go).
	enqueueIsNew  = `(SELECT true FROM {schema}.outbox_messages o WHERE o.message_id = i.message_id) IS NULL`
	enqueueNotify = `
notified AS (
    SELECT pg_notify($10, '') FROM (SELECT 1 FROM inserted LIMIT 1) one WHERE $10 <> ''
)
SELECT * FROM inserted WHERE (SELECT count(*) FROM notified) >= 0`
)
