package inbox

import (
	"context"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5"
)

// StoreResult tells which of the messages given to Store were new.
type StoreResult struct {
	// New[i] is true when the i-th message was stored, false when it was a
	// duplicate (by ID, or by a sequence number its stream has applied).
	New []bool
	// Late[i] is true when the i-th message was stored dead: its stream had
	// skipped its sequence number (GapSkip or SkipStream) before it
	// arrived. New[i] is true too. It is never handled unless an operator
	// requeues it with OutOfOrder.
	Late []bool
	// Stored and Duplicates count the outcomes of New; Dead counts Late,
	// which Stored includes.
	Stored, Duplicates, Dead int
}

// Store saves messages in one statement, keyed by (Source, ID): messages
// already stored, or whose sequence number their stream has applied, are
// duplicates and leave no row. A message whose sequence number its stream
// skipped before it arrived is stored dead (see StoreResult.Late). When
// Store returns nil the new rows are committed, so the caller may acknowledge the messages to their broker.
// A batch with an invalid message stores nothing and returns an
// *InvalidMessageError.
func (in *Inbox) Store(ctx context.Context, msgs ...Message) (StoreResult, error) {
	ctx, span := in.e.tel.startStore(ctx, msgs)
	res, err := in.e.store(ctx, in.e.pool, msgs)
	in.e.tel.endStore(ctx, span, msgs, res, err)
	if err == nil && res.Stored > 0 {
		in.e.wake.signal()
		in.warnUnhandled(msgs, res)
	}
	return res, err
}

// StoreTx is Store in the caller's transaction: the messages are stored (and
// visible to workers) only when the caller commits tx.
func (in *Inbox) StoreTx(ctx context.Context, tx pgx.Tx, msgs ...Message) (StoreResult, error) {
	ctx, span := in.e.tel.startStore(ctx, msgs)
	res, err := in.e.store(ctx, tx, msgs)
	in.e.tel.endStore(ctx, span, msgs, res, err)
	if err == nil && res.Stored > 0 {
		// Early is harmless: a worker that finds nothing yet goes back to
		// waiting, and the NOTIFY sent at commit wakes it again.
		in.e.wake.signal()
		in.warnUnhandled(msgs, res)
	}
	return res, err
}

// store validates msgs, then inserts them: a batch with an invalid message
// stores nothing.
func (e *engine) store(ctx context.Context, db batcher, msgs []Message) (StoreResult, error) {
	for i := range msgs {
		if err := e.validate(i, &msgs[i]); err != nil {
			return StoreResult{}, err
		}
	}
	fates, err := e.insert(ctx, db, msgs)
	if err != nil {
		return StoreResult{}, err
	}
	res := StoreResult{New: make([]bool, len(msgs)), Late: make([]bool, len(msgs))}
	for i, f := range fates {
		switch f {
		case fateDuplicate:
			res.Duplicates++
		case fateLate:
			res.New[i], res.Late[i] = true, true
			res.Stored++
			res.Dead++
		case fateStored:
			res.New[i] = true
			res.Stored++
		}
	}
	return res, nil
}

// Validate reports whether Store would accept msg, as an
// *InvalidMessageError when it would not. Receivers use it to reject bad
// messages one by one instead of failing a whole batch.
func (in *Inbox) Validate(msg Message) error {
	return in.e.validate(0, &msg)
}

func (e *engine) validate(i int, m *Message) error {
	bad := func(reason, detail string) error {
		return &InvalidMessageError{Index: i, ID: m.ID, Reason: reason, Detail: detail}
	}
	source := m.Source
	if source == "" {
		source = e.cfg.Source
	}
	switch {
	case m.ID == "":
		return bad(ReasonMissingID, "")
	case len(m.ID) > MaxIDBytes:
		return bad(ReasonIDTooLong, fmt.Sprintf("%d bytes, limit %d", len(m.ID), MaxIDBytes))
	case m.Topic == "":
		return bad(ReasonMissingTopic, "")
	case len(m.Topic) > MaxIDBytes:
		return bad(ReasonUnknownTopic, fmt.Sprintf("topic of %d bytes, limit %d", len(m.Topic), MaxIDBytes))
	case len(source) > MaxIDBytes:
		return bad(ReasonInvalidText, fmt.Sprintf("source of %d bytes, limit %d", len(source), MaxIDBytes))
	case len(m.Stream) > MaxStreamBytes:
		return bad(ReasonStreamTooLong, fmt.Sprintf("%d bytes, limit %d", len(m.Stream), MaxStreamBytes))
	case len(m.Body) > e.cfg.MaxBodyBytes:
		return bad(ReasonBodyTooLarge, fmt.Sprintf("%d bytes, limit %d", len(m.Body), e.cfg.MaxBodyBytes))
	case m.Stream != "" && m.Seq < *e.cfg.FirstSeq:
		return bad(ReasonBadSequence, fmt.Sprintf("sequence %d is below the first sequence %d", m.Seq, *e.cfg.FirstSeq))
	case m.Stream != "" && m.Seq == math.MaxInt64:
		return bad(ReasonBadSequence, seqCannotBeFollowed(m.Seq))
	}
	// An array, not a map: this runs for every message stored.
	for _, f := range [...]struct{ name, text string }{{"id", m.ID}, {"topic", m.Topic}, {"stream", m.Stream}, {"source", source}} {
		if !validText(f.text) {
			return bad(ReasonInvalidText, f.name+" must be UTF-8 without NUL bytes")
		}
	}
	if e.cfg.StrictTopics && !e.handlers.has(m.Topic) {
		return bad(ReasonUnknownTopic, fmt.Sprintf("no handler for topic %q", m.Topic))
	}
	return nil
}

// warnUnhandled warns, once per topic, of stored messages whose topic this
// Inbox has no handler for: they are stored and acked to the broker, and
// then wait, pending, for an Inbox that handles their topic, which may
// never come. An Inbox without any handler is a store for others (a
// receiver-only process) and says nothing.
func (in *Inbox) warnUnhandled(msgs []Message, res StoreResult) {
	if in.e.cfg.StrictTopics || len(in.e.handlers.topics()) == 0 {
		return
	}
	for i := range msgs {
		topic := msgs[i].Topic
		if i >= len(res.New) || !res.New[i] || in.e.handlers.has(topic) || !in.unhandled.first(topic) {
			continue
		}
		in.e.log.warn("inbox: stored a message whose topic has no handler in this Inbox; it stays pending until an Inbox "+
			"with a handler for its topic runs on this schema (Config.StrictTopics rejects such messages at Store instead)",
			"topic", topic, "message_id", msgs[i].ID)
	}
}
