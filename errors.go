package inbox

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrTxOwned is returned by Commit and Rollback on the transaction given to
// a Handler: the inbox commits it, together with the message's done-mark.
var ErrTxOwned = errors.New("inbox: the handler's transaction is committed by the inbox; return an error to roll back")

// Rejection reasons of an InvalidMessageError.
const (
	ReasonMissingID     = "missing message id"
	ReasonIDTooLong     = "message id too long"
	ReasonMissingTopic  = "missing topic"
	ReasonUnknownTopic  = "unknown topic"
	ReasonBodyTooLarge  = "body too large"
	ReasonBadSequence   = "bad sequence number"
	ReasonStreamTooLong = "stream key too long"
	ReasonInvalidText   = "invalid text"
)

// InvalidMessageError says why a message cannot be stored. Nothing of a batch
// that contains an invalid message is stored.
type InvalidMessageError struct {
	Index  int    // position in the batch given to Store
	ID     string // the message ID, possibly empty
	Reason string // one of the Reason constants
	Detail string
}

func (e *InvalidMessageError) Error() string {
	msg := fmt.Sprintf("inbox: invalid message %d (id %q): %s", e.Index, e.ID, e.Reason)
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

// ErrBelowWatermark is matched by a *BelowWatermarkError.
var ErrBelowWatermark = errors.New("inbox: sequence number below its stream's watermark")

// BelowWatermark is a dead ordered message whose stream has moved past it.
type BelowWatermark struct {
	RowID          int64
	Source, Stream string
	Seq            int64
	Watermark      int64 // the stream's next expected sequence number
}

// BelowWatermarkError is returned by RetryDeadMessages and RetryDeadMessage for the dead
// messages they left dead because their streams have moved past them:
// requeued, each would be taken for a duplicate and never handled. The
// other messages were requeued. OutOfOrder requeues them anyway.
type BelowWatermarkError struct {
	Messages []BelowWatermark
}

func (e *BelowWatermarkError) Error() string {
	const shown = 10
	var sb strings.Builder
	fmt.Fprintf(&sb, "inbox: %d dead messages not requeued: their streams have moved past them, so they would never run (", len(e.Messages))
	for i, m := range e.Messages {
		if i == shown {
			fmt.Fprintf(&sb, "; and %d more", len(e.Messages)-shown)
			break
		}
		if i > 0 {
			sb.WriteString("; ")
		}
		fmt.Fprintf(&sb, "message %d: stream %q seq %d, watermark %d", m.RowID, m.Stream, m.Seq, m.Watermark)
	}
	sb.WriteString("); requeue them out of order to run them anyway")
	return sb.String()
}

// Is makes errors.Is(err, ErrBelowWatermark) true.
func (e *BelowWatermarkError) Is(target error) bool { return target == ErrBelowWatermark }

type permanentError struct{ err error }

func (e *permanentError) Error() string { return "permanent: " + e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent wraps a handler error to say retrying cannot help: the message
// goes dead at once (and parks its stream, for an ordered message).
func Permanent(err error) error {
	if err == nil {
		err = errors.New("permanent failure")
	}
	return &permanentError{err: err}
}

type retryAfterError struct {
	err   error
	delay time.Duration
}

func (e *retryAfterError) Error() string {
	return fmt.Sprintf("retry after %s: %v", e.delay, e.err)
}
func (e *retryAfterError) Unwrap() error { return e.err }

// RetryAfter wraps a handler error to choose the delay before the next
// attempt instead of the backoff. The attempt still counts towards
// Config.MaxAttempts.
func RetryAfter(delay time.Duration, err error) error {
	if err == nil {
		err = errors.New("retry requested")
	}
	if delay < 0 {
		delay = 0
	}
	return &retryAfterError{err: err, delay: delay}
}

// PanicError is the failure recorded when a handler panics.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("handler panicked: %v\n%s", e.Value, e.Stack)
}

// firstLine is the first line of err's text, for logs, spans and reasons
// that must stay one line (a panic's stack follows its first line).
func firstLine(err error) string {
	s := err.Error()
	for i, r := range s {
		if r == '\n' {
			return s[:i]
		}
	}
	return s
}
