-- Sequence ranges a stream moved past without applying them: by the gap
-- policy (GapSkip) or by an operator (SkipStream). A message that arrives
-- later with a sequence number in one of these ranges was never applied, so
-- it is kept as dead with the reason, not taken for a duplicate. Ranges of
-- one stream never overlap (the watermark only moves forward), so the range
-- with the largest from_seq not above a sequence number is the only one that
-- can hold it. Skips are rare; the rows are kept for as long as the stream.
CREATE TABLE {schema}.inbox_skips (
    source     text        NOT NULL,
    stream     text        NOT NULL,
    from_seq   bigint      NOT NULL,
    to_seq     bigint      NOT NULL,
    skipped_at timestamptz NOT NULL DEFAULT now(),
    how        text        NOT NULL,
    PRIMARY KEY (source, stream, from_seq),
    CONSTRAINT inbox_skips_range CHECK (from_seq <= to_seq)
);

-- Set when an operator requeued the message below its stream's watermark to
-- run out of order (RetryDead with OutOfOrder); it stays set once handled.
-- A constant default is a catalog-only change: no table rewrite.
ALTER TABLE {schema}.inbox_messages ADD COLUMN out_of_order boolean NOT NULL DEFAULT false;
