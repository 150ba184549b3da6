-- Per-topic statistics (Inbox.Stats, inboxctl stats and the backlog gauges)
-- read these two indexes only: each topic's pending count, due-or-scheduled
-- split and oldest pending message, and its done and dead counts and recent
-- rate, are index ranges; the list of topics is a skip scan over them. Every
-- row is in exactly one of the two.
--
-- On a large existing table, build them first without blocking writes, with
-- CREATE INDEX CONCURRENTLY and these names: this migration then finds them.
CREATE INDEX IF NOT EXISTS inbox_messages_topic_pending
    ON {schema}.inbox_messages (topic, received_at) INCLUDE (run_at)
    WHERE state = 'pending';

CREATE INDEX IF NOT EXISTS inbox_messages_topic_finished
    ON {schema}.inbox_messages (topic, state, processed_at)
    WHERE state IN ('done', 'dead');
