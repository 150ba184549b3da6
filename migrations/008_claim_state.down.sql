DROP TABLE {schema}.inbox_stream_heads;

DROP INDEX {schema}.inbox_messages_unordered_topic;
