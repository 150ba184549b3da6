DROP INDEX IF EXISTS {schema}.inbox_messages_topic_finished;
DROP INDEX IF EXISTS {schema}.inbox_messages_topic_pending;
