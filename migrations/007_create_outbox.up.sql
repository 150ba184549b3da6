-- Outgoing messages, written in the caller's transaction and published by a
-- relay after commit. message_id is unique: enqueueing an ID already in the
-- outbox is a duplicate. Sent rows stay (without their body) for the
-- outbox's retention window.
CREATE TABLE {schema}.outbox_messages (
    id           bigserial   PRIMARY KEY,
    message_id   text        NOT NULL,
    destination  text        NOT NULL DEFAULT '',
    exchange     text        NOT NULL DEFAULT '',
    routing_key  text        NOT NULL DEFAULT '',
    type         text        NOT NULL DEFAULT '',
    content_type text        NOT NULL DEFAULT '',
    stream       text,
    seq          bigint,
    headers      jsonb       NOT NULL DEFAULT '{}',
    body         bytea,
    state        text        NOT NULL DEFAULT 'pending'
                             CHECK (state IN ('pending', 'sent', 'dead')),
    attempts     integer     NOT NULL DEFAULT 0,
    run_at       timestamptz NOT NULL DEFAULT now(),
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz,
    CONSTRAINT outbox_messages_id UNIQUE (message_id),
    CONSTRAINT outbox_messages_stream_seq CHECK ((stream IS NULL) = (seq IS NULL)),
    CONSTRAINT outbox_messages_stream_order UNIQUE (stream, seq)
);

-- The relay's claim walks pending rows in enqueue order.
CREATE INDEX outbox_messages_pending
    ON {schema}.outbox_messages (id)
    WHERE state = 'pending';

-- Is an earlier message of the stream still unsent? (the claim's head test)
CREATE INDEX outbox_messages_stream_unsent
    ON {schema}.outbox_messages (stream, seq)
    WHERE state <> 'sent' AND stream IS NOT NULL;

-- Retention cleanup and the sent-per-minute figure.
CREATE INDEX outbox_messages_sent
    ON {schema}.outbox_messages (sent_at)
    WHERE state = 'sent';

-- Operators list dead messages.
CREATE INDEX outbox_messages_dead
    ON {schema}.outbox_messages (id)
    WHERE state = 'dead';

-- One row per outgoing stream: the last sequence number assigned. Enqueueing
-- to a stream updates it in the enqueuing transaction, so concurrent
-- transactions take numbers in commit order, and a rollback leaves no gap.
CREATE TABLE {schema}.outbox_streams (
    stream     text        PRIMARY KEY,
    last_seq   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
