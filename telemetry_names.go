package inbox

// The telemetry catalogue: the names under which the inbox reports. See
// telemetry.go for how, and doc.go for an overview.

// InstrumentationName is the name of the inbox's Meter and Tracer, which
// is also the instrumentation scope of everything it reports.
const InstrumentationName = "github.com/inboxkit/inbox"

// Names of the inbox's metric instruments. Counters are per topic
// (attribute AttrTopic) and per schema (AttrSchema). The receiver's counters
// (package amqp's MetricReceived and MetricMalformed) carry AttrSource
// instead, and AttrReason.
const (
	// MetricStored counts messages stored by Store and StoreTx (for
	// StoreTx: when it returns, before the caller commits).
	MetricStored = "inbox.messages.stored"
	// MetricDuplicates counts messages Store found already stored, or below
	// their stream's watermark, and did not store again.
	MetricDuplicates = "inbox.messages.duplicates"
	// MetricProcessed counts messages whose handler committed.
	MetricProcessed = "inbox.messages.processed"
	// MetricRetried counts failed attempts that will be retried.
	MetricRetried = "inbox.messages.retried"
	// MetricDead counts messages that went dead.
	MetricDead = "inbox.messages.dead"
	// MetricHandlerDuration is the histogram of handler run times, in
	// seconds, with AttrOutcome "ok" or "error".
	MetricHandlerDuration = "inbox.handler.duration"
	// MetricLatency is the histogram of end-to-end latency, in seconds: from
	// the message's storing (received_at) to the commit of its handler.
	// Both ends are read on the database's clock, so clock skew between
	// hosts does not distort it.
	MetricLatency = "inbox.message.latency"
	// MetricBacklog is the observable gauge of pending messages per topic
	// (due now or scheduled for a retry), counted up to StatsCountLimit.
	MetricBacklog = "inbox.backlog"
	// MetricUnhandledBacklog is the observable gauge of pending messages per
	// topic that this Inbox has no handler for (see Stats.UnhandledPending);
	// topics it handles are not reported. Above zero for long, it means
	// messages no process will handle (see Config.StrictTopics).
	MetricUnhandledBacklog = "inbox.backlog.unhandled"
	// MetricOldestPendingAge is the observable gauge of the age, in seconds,
	// of each topic's oldest pending message.
	MetricOldestPendingAge = "inbox.oldest_pending.age"
	// MetricStreamsParked and MetricStreamsGap are observable gauges of the
	// streams parked, and of those (not parked) waiting for a missing
	// sequence number.
	MetricStreamsParked = "inbox.streams.parked"
	MetricStreamsGap    = "inbox.streams.gap"
	// MetricStreamsMaxLag is the observable gauge of how long, in seconds,
	// the longest-waiting due message of any stream has been due (see
	// StreamStats.MaxLag).
	MetricStreamsMaxLag = "inbox.streams.max_lag"
)

// Attribute keys of the inbox's metrics and spans.
const (
	AttrSchema  = "inbox.schema"
	AttrTopic   = "inbox.topic"
	AttrSource  = "inbox.source"
	AttrOutcome = "inbox.outcome"
	AttrReason  = "inbox.reason"
	// Span attributes only.
	AttrMessageID = "messaging.message.id"
	AttrRowID     = "inbox.row_id"
	AttrAttempt   = "inbox.attempt"
	AttrStream    = "inbox.stream"
	AttrSeq       = "inbox.seq"
	AttrBatchSize = "messaging.batch.message_count"
)

// Trace context headers: Store and the workers read a W3C trace context
// from these keys of Message.Headers. A receiver stores them as the
// publisher sent them.
const (
	HeaderTraceParent = "traceparent"
	HeaderTraceState  = "tracestate"
)

// Names of the outbox's metric instruments, all with attribute AttrSchema.
const (
	// MetricOutboxEnqueued counts messages enqueued (when Enqueue returns,
	// before the caller commits).
	MetricOutboxEnqueued = "inbox.outbox.enqueued"
	// MetricOutboxSent counts messages the broker confirmed; its rate is the
	// outbox's throughput.
	MetricOutboxSent = "inbox.outbox.sent"
	// MetricOutboxRetried counts refused publishes that will be retried.
	MetricOutboxRetried = "inbox.outbox.retried"
	// MetricOutboxFailed counts messages that went dead.
	MetricOutboxFailed = "inbox.outbox.failed"
	// MetricOutboxPending, MetricOutboxOldestPendingAge (seconds) and
	// MetricOutboxDead are observable gauges of OutboxStats' figures,
	// reported while a relay runs (see Outbox.ObserveStats).
	MetricOutboxPending          = "inbox.outbox.pending"
	MetricOutboxOldestPendingAge = "inbox.outbox.oldest_pending.age"
	MetricOutboxDead             = "inbox.outbox.dead"
)
