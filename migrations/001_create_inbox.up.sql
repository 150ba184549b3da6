-- Messages as received. (source, message_id) is the dedup key; rows stay after
-- processing (without their body) for the retention window so late duplicates
-- are still recognised.
CREATE TABLE {schema}.inbox_messages (
    id           bigserial   PRIMARY KEY,
    source       text        NOT NULL,
    message_id   text        NOT NULL,
    topic        text        NOT NULL,
    stream       text,
    seq          bigint,
    headers      jsonb       NOT NULL DEFAULT '{}',
    body         bytea,
    state        text        NOT NULL DEFAULT 'pending'
                             CHECK (state IN ('pending', 'done', 'dead')),
    attempts     integer     NOT NULL DEFAULT 0,
    run_at       timestamptz NOT NULL DEFAULT now(),
    last_error   text,
    received_at  timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz,
    CONSTRAINT inbox_messages_dedup UNIQUE (source, message_id),
    CONSTRAINT inbox_messages_stream_seq CHECK ((stream IS NULL) = (seq IS NULL))
);

-- Claim of unordered work: reads only the runnable rows it returns.
CREATE INDEX inbox_messages_unordered_ready
    ON {schema}.inbox_messages (run_at, id)
    WHERE state = 'pending' AND stream IS NULL;

-- Claim of stream heads, in arrival order.
CREATE INDEX inbox_messages_stream_ready
    ON {schema}.inbox_messages (run_at, id)
    WHERE state = 'pending' AND stream IS NOT NULL;

-- Loading a claimed stream's next messages, and finding gaps.
CREATE INDEX inbox_messages_stream_pending
    ON {schema}.inbox_messages (source, stream, seq)
    WHERE state = 'pending' AND stream IS NOT NULL;

-- Retention cleanup.
CREATE INDEX inbox_messages_done
    ON {schema}.inbox_messages (processed_at)
    WHERE state = 'done';

-- Operators list dead messages.
CREATE INDEX inbox_messages_dead
    ON {schema}.inbox_messages (id)
    WHERE state = 'dead';

-- One row per ordered stream. next_seq is the watermark: a sequence below it
-- has been applied, so a message carrying it is a duplicate forever. Workers
-- lock this row for as long as they process the stream, which keeps one
-- stream on one worker at a time.
CREATE TABLE {schema}.inbox_streams (
    source            text        NOT NULL,
    stream            text        NOT NULL,
    next_seq          bigint      NOT NULL,
    gap_since         timestamptz,
    gap_reported      boolean     NOT NULL DEFAULT false,
    parked_at         timestamptz,
    parked_reason     text,
    parked_message_id bigint,
    skipped           bigint      NOT NULL DEFAULT 0,
    last_skip         text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, stream)
);

CREATE INDEX inbox_streams_parked
    ON {schema}.inbox_streams (parked_at)
    WHERE parked_at IS NOT NULL;

CREATE INDEX inbox_streams_gap
    ON {schema}.inbox_streams (gap_since)
    WHERE gap_since IS NOT NULL;
