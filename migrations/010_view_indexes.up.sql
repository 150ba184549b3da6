-- The indexes that only the operator views read (Stats, the dashboard,
-- inboxctl, the backlog gauges) get a condition that only those views'
-- queries state: topic <> '' (every stored message has a topic, so they
-- still cover every row they did).
--
-- Why: on a queue table, the statistics of a partial index of pending rows
-- are taken when little is pending, so the planner takes such an index for
-- nearly empty whenever one can serve a query at all. A full scan of it,
-- checking each entry against the query's key, then looks no dearer than
-- the lookup the query is written for; and when a backlog builds, every
-- worker's keyed statement (a stream's refresh, a suspect claim) walks the
-- whole backlog, which slows the workers, which grows the backlog. A soak
-- showed stalls of seconds from it. The workers' statements never say
-- topic <> '', so these indexes are out of their reach.
--
-- The indexes are rebuilt in the migration's transaction, which keeps
-- writers to inbox_messages waiting while they build: on a large table, run
-- it at a quiet moment.
DROP INDEX IF EXISTS {schema}.inbox_messages_topic_pending;
CREATE INDEX inbox_messages_topic_pending
    ON {schema}.inbox_messages (topic, received_at) INCLUDE (run_at)
    WHERE state = 'pending' AND topic <> '';

DROP INDEX IF EXISTS {schema}.inbox_messages_topic_finished;
CREATE INDEX inbox_messages_topic_finished
    ON {schema}.inbox_messages (topic, state, processed_at)
    WHERE state IN ('done', 'dead') AND topic <> '';

DROP INDEX IF EXISTS {schema}.inbox_messages_stream_ready;
CREATE INDEX inbox_messages_stream_ready
    ON {schema}.inbox_messages (run_at, id)
    WHERE state = 'pending' AND stream IS NOT NULL AND topic <> '';
