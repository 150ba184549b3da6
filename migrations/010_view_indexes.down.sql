DROP INDEX IF EXISTS {schema}.inbox_messages_topic_pending;
CREATE INDEX inbox_messages_topic_pending
    ON {schema}.inbox_messages (topic, received_at) INCLUDE (run_at)
    WHERE state = 'pending';

DROP INDEX IF EXISTS {schema}.inbox_messages_topic_finished;
CREATE INDEX inbox_messages_topic_finished
    ON {schema}.inbox_messages (topic, state, processed_at)
    WHERE state IN ('done', 'dead');

DROP INDEX IF EXISTS {schema}.inbox_messages_stream_ready;
CREATE INDEX inbox_messages_stream_ready
    ON {schema}.inbox_messages (run_at, id)
    WHERE state = 'pending' AND stream IS NOT NULL;
