ALTER TABLE {schema}.inbox_messages RESET (autovacuum_vacuum_cost_delay);
