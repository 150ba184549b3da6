DROP TABLE IF EXISTS {schema}.inbox_streams;
DROP TABLE IF EXISTS {schema}.inbox_messages;
