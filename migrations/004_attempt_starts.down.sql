DROP TABLE IF EXISTS {schema}.inbox_attempt_starts;
