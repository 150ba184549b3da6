-- The head rows 009 added are valid under 008 too: they stay.
ALTER TABLE {schema}.inbox_messages RESET (
    autovacuum_vacuum_scale_factor, autovacuum_vacuum_insert_scale_factor,
    autovacuum_analyze_scale_factor);
ALTER TABLE {schema}.inbox_attempt_starts RESET (
    autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold, autovacuum_vacuum_cost_delay);
ALTER TABLE {schema}.inbox_stream_heads RESET (
    autovacuum_vacuum_scale_factor, autovacuum_vacuum_cost_delay);
ALTER TABLE {schema}.inbox_streams RESET (
    fillfactor, autovacuum_vacuum_scale_factor, autovacuum_vacuum_cost_delay);
