// Package inbox is a transactional inbox for Go services that consume
// messages from RabbitMQ and keep their state in PostgreSQL.
//
// A broker delivers at least once: after a lost ack, a publisher's retry or
// a reconnect, the same message comes again, and messages of one entity
// may arrive out of order. The inbox turns that into "each message's effect
// is applied exactly once, in order per stream": every delivery is first
// stored in an inbox table keyed by its message ID (a duplicate hits the
// key and leaves no second row), acknowledged only after that commit, and
// then handled by workers in a transaction that also marks the message
// done. The broker is never held while business code runs.
//
// # Guarantees
//
//   - Nothing lost: a delivery is acknowledged only after the row that holds
//     it is committed. A crash before that leaves it unacknowledged, and the
//     broker delivers it again.
//   - No double effect: a [Handler] writes through the [pgx.Tx] it is given,
//     which commits together with the message's done-mark. Once one attempt
//     has committed, duplicates (the same ID from the same source) never
//     reach a handler again.
//   - Order per stream: for messages with a [Message.Stream] and
//     [Message.Seq], the handler of sequence n+1 never starts before that of
//     n has committed. A missing sequence number is waited for, not skipped
//     silently ([GapPolicy]). Different streams run in parallel.
//   - Bounded stuck time: a worker's claim is a row lock of its transaction,
//     released by PostgreSQL as soon as a dead worker's connection closes.
//     A hung handler's context is cancelled after [Config.HandlerTimeout],
//     and the server ends a claim idle for HandlerTimeout plus 5 s (TCP
//     keepalives end that of a vanished client in about a minute). A claim
//     starts no handler after [Config.BatchBudget]. [Inbox.Stop] returns by
//     its context's deadline whatever a handler does.
//   - A handler that kills the process (os.Exit, a fatal error, an OOM
//     kill) does not loop: the start of each run is recorded outside the
//     claim, a run that never finished makes its message run alone, and
//     after [Config.MaxAttempts] such runs it is dead.
//   - Bad input gets a clear fate: a message without an ID, with a bad
//     sequence number or too large a body is refused with a reason
//     ([InvalidMessageError]; the receiver rejects it to the queue's
//     dead-letter exchange). A message that keeps failing, or fails
//     [Permanent]ly, is dead: kept with its error, listed, and replayable.
//
// What the inbox does not do: it does not make delivery itself
// exactly-once (nothing can, across a network), and it cannot undo side
// effects a handler makes outside its transaction (an HTTP call, an email):
// those may happen again when an attempt is rolled back, so they must be
// idempotent on their own.
//
// # Quick start
//
// Create the tables once, with [github.com/inboxkit/inbox/migrations.Up] or
// "inboxctl migrate up". Then make an [Inbox] on a pgxpool, register a
// handler per topic with [Inbox.Handle], start the workers with
// [Inbox.Start], and feed it: the receiver of package
// [github.com/inboxkit/inbox/amqp] stores what it consumes from a RabbitMQ
// queue, and any code can call [Inbox.Store] or, inside its own
// transaction, [Inbox.StoreTx].
//
//	in, err := inbox.New(pool, inbox.Config{Schema: "inbox"})
//	if err != nil {
//		return err
//	}
//	in.Handle("order.paid", inbox.JSON(markPaid))
//	if err := in.Start(ctx); err != nil {
//		return err
//	}
//	defer in.Stop(context.Background())
//
// Messages of a topic without a handler are kept for another instance
// unless [Config.StrictTopics] is set (see Handlers). The runnable examples
// below, and the programs in the repository's examples directory, show
// whole services.
//
// # Handlers
//
// A [Handler] gets the message and a transaction. Write the message's effect
// through that transaction and return nil: the writes and the done-mark
// commit together. [JSON] decodes the body into a typed value first. What a
// handler returns decides what happens next:
//
//   - nil: done. Its writes are committed.
//   - an error: the writes are rolled back and the message is tried again
//     after an exponential backoff ([Config.RetryInitial] up to
//     [Config.RetryMax]), up to [Config.MaxAttempts] attempts in all, after
//     which it is dead.
//   - [RetryAfter](d, err): the same, after d.
//   - [Permanent](err): dead at once; retrying cannot help (a body that does
//     not decode, say).
//
// A panic counts as a failed attempt, with its stack as the error. The
// handler must not Commit or Roll back the transaction (both return
// [ErrTxOwned]); several messages may share one database transaction, each
// handler's writes in a savepoint of their own. The handler's context ends
// after [Config.HandlerTimeout] or when [Inbox.Stop] gives up waiting; a
// handler that ignores it loses its claim (the server ends the session, or
// Stop closes its connection) and is not waited for.
// [Middleware], set in [Config.Middleware] or per topic, wraps handlers for
// logging, metrics or tracing.
//
// A message whose topic has no handler in this Inbox is stored and waits,
// pending, for an Inbox that handles it (instances with different handlers
// may share one inbox). If none ever does, it waits forever: the Inbox warns
// once per such topic and counts them in [Stats].UnhandledPending. Set
// [Config.StrictTopics] to reject them at [Inbox.Store] instead.
//
// # Ordering
//
// Messages with the same [Message.Source] and [Message.Stream] (an order ID,
// an account number) are handled one at a time in [Message.Seq] order,
// starting at [Config.FirstSeq]. The stream remembers the next sequence it
// expects (its watermark), so a message whose sequence is below it is a
// duplicate, even after its row is gone, for as long as the stream is kept
// (forever, unless it expires: see Idle streams). When the next sequence has
// not arrived but later ones have, the stream waits (a gap); after
// [Config.GapTimeout], counted from when the watermark reached the gap,
// [Config.GapPolicy] applies: keep waiting ([GapWait]), go on without it
// ([GapSkip]), or park the stream for an operator ([GapPark]). A message
// that goes dead parks its stream only; other streams carry on. Messages
// without a stream are handled in any order, in parallel.
//
// Skipped sequence numbers ([GapSkip], [Inbox.SkipStream]) are recorded: a
// message that arrives for one later was never applied, so it is stored
// dead with the reason "arrived after sequence N was skipped", not taken
// for a duplicate ([StoreResult.Late]). [Inbox.RetryDeadMessages] refuses a
// message below its stream's watermark ([ErrBelowWatermark]) unless given
// [OutOfOrder], which runs it once after its successors without moving the
// watermark. The largest sequence number, math.MaxInt64, is rejected
// ([ReasonBadSequence]): no watermark could follow it.
//
// # Operations
//
// [Inbox.ListMessages] and [Inbox.GetMessage] show stored messages (their
// [State]), with the last error of failing and dead ones;
// [Inbox.RetryDeadMessages] and [Inbox.RetryDeadMessage] requeue dead
// messages, [Inbox.DeleteDeadMessages] drops them, and [Inbox.DeadGroups]
// groups them by failure for [Inbox.RetryDeadGroup] and
// [Inbox.DeleteDeadGroup]. [Inbox.ListStreams] shows streams that wait on a
// gap or are parked; [Inbox.RetryStream] and [Inbox.SkipStream] unblock
// them and return the stream's new state. The same operations are in the
// inboxctl command (cmd/inboxctl) and the dashboard (package dashboard).
// Logs go through [log/slog] ([Config.Logger]). Processed rows keep their
// message ID, to catch late duplicates, for [Config.Retention]; their
// bodies are dropped at once.
//
// # Idle streams
//
// A stream's row, with its watermark, is kept forever unless
// [Config.IdleStreamExpiry] is set: maintenance then deletes streams with
// no pending message, not parked, whose watermark has not moved for that
// long. An expired stream forgets its watermark and skipped ranges, so a
// message of it that arrives later starts it again at [Config.FirstSeq]:
// a copy is still a duplicate if its own row is kept (done less than
// Retention ago, or dead), by its message ID, and otherwise is handled
// again. Store and expiry are safe against each other: a stream expiring
// while a message of it is stored is made again, at the watermark the
// message was judged by.
//
// # Sizing
//
// Each worker ([Config.Workers]) holds one pool connection while it works;
// [Inbox.Store], the receiver, maintenance and the operations take others
// for moments. Give the pool at least Workers+2 connections, more when the
// receiver and the service's own code share it. A started Inbox also opens
// two connections of its own, outside the pool, with the pool's settings:
// one to LISTEN for other processes' stores (none with
// [Config.DisableListen]), and a side connection on which the workers
// record the start of each handler run, so that a run that kills the
// process is recognised. Count them against the server's max_connections.
//
// # Telemetry
//
// Metrics and spans go through OpenTelemetry: the providers of
// [Config.MeterProvider] and [Config.TracerProvider], the global ones by
// default, which record nothing until the application installs an SDK;
// the inbox starts no exporter. The names are constants of this package,
// in one place (telemetry_names.go): the instrumentation scope
// [InstrumentationName]; the metrics, MetricStored to
// MetricStreamsMaxLag (counters per topic, histograms of handler duration
// and end-to-end latency, backlog and stream gauges); the outbox's,
// MetricOutboxEnqueued to MetricOutboxDead; the attributes, such
// as [AttrTopic] and [AttrSchema]; and the trace-context headers
// ([HeaderTraceParent]). A handler's span continues the trace its message
// carried in, so one trace runs from the publisher to the handler.
// [Stats] reads the same figures on demand.
//
// # Emitting messages: the outbox
//
// A handler, or any service transaction, emits messages with
// [Outbox.Enqueue] on its pgx.Tx: they are stored in the same transaction
// and published by a relay (package amqp's Relay) only once it commits, so
// an effect and its announcement happen together or not at all. Inside a
// handler, an [OutgoingMessage] without an ID gets one derived from the
// incoming message and the enqueue's position in the handler run: a retried
// handler emits the same IDs, which a downstream inbox deduplicates. A
// message with a Stream gets the stream's next sequence number in the
// enqueuing transaction; the relay publishes each stream's messages one at a
// time, each after the previous one's publisher confirm, with the stream and
// sequence in the headers the amqp receiver reads by default. Messages the
// broker refuses are retried with backoff ([OutboxConfig.MaxAttempts]), and
// unroutable ones are dead at once; [Outbox.ListMessages],
// [Outbox.RetryDeadMessages] and [Outbox.DeleteDeadMessages] (and inboxctl
// outbox) handle them, and [Outbox.Stats] gives the figures. The trace
// context of the enqueuing span travels in the traceparent header. See
// docs/outbox.md.
//
// For tests of a service, the module github.com/inboxkit/inbox/inboxtest
// gives each test a migrated schema of its own, and helpers to publish
// messages and wait until they are handled.
package inbox
