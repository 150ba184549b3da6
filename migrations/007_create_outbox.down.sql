DROP TABLE IF EXISTS {schema}.outbox_streams;
DROP TABLE IF EXISTS {schema}.outbox_messages;
