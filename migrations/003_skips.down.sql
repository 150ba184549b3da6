ALTER TABLE {schema}.inbox_messages DROP COLUMN IF EXISTS out_of_order;
DROP TABLE IF EXISTS {schema}.inbox_skips;
