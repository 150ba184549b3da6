-- Handler runs that have started and not yet recorded an outcome, keyed by
-- inbox_messages.id. A worker writes these rows, on a connection other than
-- its claim's, before it runs the claim's handlers, and deletes them in the
-- transaction that records the outcomes. A row whose message is no longer
-- locked by a live claim therefore marks a run that never finished: the
-- process died in the handler (os.Exit, a fatal error, an OOM kill). Such a
-- message runs alone in its next claim; deaths counts the runs alone that
-- never finished, and at Config.MaxAttempts the message is dead.
--
-- No foreign key: checking one would lock the message row, which the claim
-- holds.
CREATE TABLE {schema}.inbox_attempt_starts (
    id         bigint      PRIMARY KEY,
    deaths     integer     NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now()
);
