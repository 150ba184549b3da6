DROP TABLE {schema}.inbox_stream_heads;

CREATE INDEX inbox_messages_unordered_ready
    ON {schema}.inbox_messages (run_at, id)
    WHERE state = 'pending' AND stream IS NULL;

DROP INDEX {schema}.inbox_messages_unordered_topic;
