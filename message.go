package inbox

import "time"

// Message is one inbox message: what is stored, and what a Handler receives.
type Message struct {
	// ID is the message's identity within Source; a second message with the
	// same Source and ID is a duplicate. Required.
	ID string
	// Source names the dedup namespace, usually the queue the message came
	// from. Defaults to Config.Source when empty.
	Source string
	// Topic selects the Handler. Required.
	Topic string
	// Stream, when set, orders the message: within one (Source, Stream) the
	// handler for Seq n+1 never starts before Seq n has committed.
	Stream string
	// Seq is the message's position in Stream. Ignored without Stream.
	Seq int64
	// Headers are kept with the message (for example a W3C traceparent).
	Headers map[string]string
	// Body is the payload, up to Config.MaxBodyBytes.
	Body []byte

	// Attempt is the 1-based number of this handler run: one more than the
	// attempts that came before it (MessageInfo.Attempts). Set for handlers.
	Attempt int
	// ReceivedAt is when the message was stored. Set for handlers.
	ReceivedAt time.Time
	// RowID is the inbox row's internal id, as shown by the operations tools.
	// Set for handlers.
	RowID int64

	// deaths counts the runs of this message, alone in their claim, during
	// which the process died (see attempts.go).
	deaths int
}

// State is where a stored message stands.
type State string

const (
	// StatePending messages wait for their handler: due now, scheduled
	// for a retry, or held by a worker.
	StatePending State = "pending"
	// StateDone messages were handled (or found to be duplicates); their
	// rows are kept for Config.Retention, without body, as dedup keys.
	StateDone State = "done"
	// StateDead messages were given up on, and wait for an operator.
	StateDead State = "dead"
)
