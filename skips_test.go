package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/inboxkit/inbox"
)

// streamRow reads the columns of a stream these tests look at.
func (b *bundle) streamRow(stream string) (nextSeq int64, gapSince *time.Time) {
	b.t.Helper()
	if err := b.pool.QueryRow(b.ctx, `SELECT next_seq, gap_since FROM `+b.q+`.inbox_streams WHERE stream = $1`, stream).
		Scan(&nextSeq, &gapSince); err != nil {
		b.t.Fatal(err)
	}
	return nextSeq, gapSince
}

// ageGaps makes every open gap look an hour old, standing for time passed.
func (b *bundle) ageGaps() {
	b.t.Helper()
	b.exec(`UPDATE ` + b.q + `.inbox_streams SET gap_since = now() - interval '1 hour' WHERE gap_since IS NOT NULL`)
}

// gapInbox is an Inbox whose gap policy runs only when the test calls
// MaintainOnce, with a timeout the test reaches by ageing gaps.
func (b *bundle) gapInbox(policy inbox.GapPolicy) *inbox.Inbox {
	b.t.Helper()
	in := b.newInbox(inbox.Config{GapTimeout: time.Minute, GapPolicy: policy, MaintenanceInterval: time.Hour})
	in.Handle("t", b.effect)
	return in
}

func (b *bundle) maintain(in *inbox.Inbox) {
	b.t.Helper()
	if err := inbox.MaintainOnce(in, b.ctx); err != nil {
		b.t.Fatal(err)
	}
}

func TestGapClockRestartsWhenWatermarkMoves(t *testing.T) {
	b := setup(t)
	in := b.gapInbox(inbox.GapSkip)
	b.start(in)
	if _, err := in.Store(b.ctx, seqMsg("a", 2)); err != nil {
		t.Fatal(err)
	}
	b.waitFor("the gap before seq 2 to be stamped", 10*time.Second, func() bool {
		b.maintain(in)
		_, since := b.streamRow("a")
		return since != nil
	})
	b.ageGaps() // the wait for seq 1 is long past the timeout
	var moved time.Time
	if err := b.pool.QueryRow(b.ctx, `SELECT now()`).Scan(&moved); err != nil {
		t.Fatal(err)
	}
	if _, err := in.Store(b.ctx, seqMsg("a", 1), seqMsg("a", 4)); err != nil {
		t.Fatal(err)
	}
	b.waitState("done", 2, 10*time.Second)
	next, since := b.streamRow("a")
	if next != 3 || since == nil || since.Before(moved) {
		t.Fatalf("after applying 1 and 2: next_seq %d, gap_since %v; want 3 and a gap clock started at or after %v", next, since, moved)
	}
	// The new gap has waited less than GapTimeout: the policy must not fire.
	b.maintain(in)
	if next, _ := b.streamRow("a"); next != 3 {
		t.Fatalf("seq 3 skipped %s after it became the gap; GapTimeout is a minute", time.Since(moved))
	}
}

// skipGap stores 1 and 3 on stream a, lets 1 run, and skips 2 by policy.
func (b *bundle) skipGap(in *inbox.Inbox) {
	b.t.Helper()
	if _, err := in.Store(b.ctx, seqMsg("a", 1), seqMsg("a", 3)); err != nil {
		b.t.Fatal(err)
	}
	b.waitState("done", 1, 10*time.Second)
	b.waitFor("the gap at seq 2 to be stamped", 10*time.Second, func() bool {
		b.maintain(in)
		_, since := b.streamRow("a")
		return since != nil
	})
	b.ageGaps()
	b.maintain(in)
	b.waitState("done", 2, 10*time.Second)
}

// checkLate asserts the one dead message is seq 2 of stream a, kept with
// the late-arrival reason, and counted as dead.
func (b *bundle) checkLate(in *inbox.Inbox) {
	b.t.Helper()
	dead, err := in.ListMessages(b.ctx, inbox.MessageFilter{State: inbox.StateDead})
	if err != nil {
		b.t.Fatal(err)
	}
	if len(dead) != 1 || dead[0].Stream != "a" || dead[0].Seq != 2 ||
		!strings.Contains(dead[0].LastError, "arrived after sequence 2 was skipped") {
		b.t.Fatalf("dead messages = %+v; want seq 2 dead as a late arrival", dead)
	}
	st, err := in.Stats(b.ctx)
	if err != nil {
		b.t.Fatal(err)
	}
	if st.Total().Dead != 1 {
		b.t.Fatalf("stats dead = %d, want 1", st.Total().Dead)
	}
	if n := b.count(`SELECT count(*) FROM ` + b.q + `.effects WHERE seq = 2`); n != 0 {
		b.t.Fatalf("late seq 2 was applied %d times after its skip", n)
	}
}

func TestLateArrivalAfterGapSkipIsDead(t *testing.T) {
	b := setup(t)
	in := b.gapInbox(inbox.GapSkip)
	b.start(in)
	b.skipGap(in)
	res, err := in.Store(b.ctx, seqMsg("a", 2))
	if err != nil || res.Stored != 1 || res.Dead != 1 || !res.Late[0] {
		t.Fatalf("late seq 2: %+v, %v; want it stored dead", res, err)
	}
	b.checkLate(in)
	// True duplicates stay duplicates: the same ID again, and another ID
	// for a sequence number that was applied.
	res, err = in.Store(b.ctx, seqMsg("a", 2), inbox.Message{ID: "other", Topic: "t", Stream: "a", Seq: 1})
	if err != nil || res.Duplicates != 2 {
		t.Fatalf("duplicates after the late arrival: %+v, %v", res, err)
	}
}

func TestLateArrivalAfterSkipStreamIsDead(t *testing.T) {
	b := setup(t)
	in := b.gapInbox(inbox.GapWait)
	b.start(in)
	if _, err := in.Store(b.ctx, seqMsg("a", 1), seqMsg("a", 3)); err != nil {
		t.Fatal(err)
	}
	b.waitState("done", 1, 10*time.Second)
	if _, err := in.SkipStream(b.ctx, "", "a"); err != nil {
		t.Fatal(err)
	}
	b.waitState("done", 2, 10*time.Second)
	if _, err := in.Store(b.ctx, seqMsg("a", 2)); err != nil {
		t.Fatal(err)
	}
	b.checkLate(in)
}

// The store read the watermark before the skip committed: the row is
// pending below the watermark, and the worker must not call it a duplicate.
func TestLateArrivalRacingTheSkipIsDeadNotDone(t *testing.T) {
	b := setup(t)
	in := b.gapInbox(inbox.GapSkip)
	b.start(in)
	b.skipGap(in)
	// The row as that Store writes it, with its stream head's upsert
	// (which acts on the newest watermark, past the skipped sequence).
	b.exec(`WITH m AS (INSERT INTO ` + b.q + `.inbox_messages (source, message_id, topic, stream, seq)
		VALUES ('` + inbox.DefaultSource + `', 'a-2', 't', 'a', 2) RETURNING id)
		UPDATE ` + b.q + `.inbox_stream_heads SET low_seq = least(low_seq, 2), ready_at = least(ready_at, now()),
			topic = CASE WHEN ready_at IS NULL THEN 't' ELSE topic END,
			head_id = CASE WHEN ready_at IS NULL THEN (SELECT id FROM m) ELSE head_id END
		WHERE stream = 'a' AND 2 <= next_seq`)
	b.waitFor("the late row to be settled", 10*time.Second, func() bool {
		return b.count(`SELECT count(*) FROM `+b.q+`.inbox_messages WHERE message_id = 'a-2' AND state <> 'pending'`) == 1
	})
	b.checkLate(in)
}

func TestSequenceThatCannotBeFollowedIsRejected(t *testing.T) {
	b := setup(t)
	in := b.gapInbox(inbox.GapWait)
	_, err := in.Store(b.ctx, inbox.Message{ID: "max", Topic: "t", Stream: "a", Seq: math.MaxInt64})
	var invalid *inbox.InvalidMessageError
	if !errors.As(err, &invalid) || invalid.Reason != inbox.ReasonBadSequence || !strings.Contains(invalid.Detail, "cannot be followed") {
		t.Fatalf("seq MaxInt64: %v; want %q", err, inbox.ReasonBadSequence)
	}
	if _, err := in.Store(b.ctx, inbox.Message{ID: "max-1", Topic: "t", Stream: "a", Seq: math.MaxInt64 - 1}); err != nil {
		t.Fatalf("seq MaxInt64-1: %v", err)
	}
}

// logRecorder keeps the messages of the records logged at WARN or above.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *logRecorder) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler           { return r }
func (r *logRecorder) WithGroup(string) slog.Handler                { return r }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	var sb strings.Builder
	sb.WriteString(rec.Message)
	rec.Attrs(func(a slog.Attr) bool {
		sb.WriteString(" " + a.String())
		return true
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, sb.String())
	return nil
}

func (r *logRecorder) has(sub string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.msgs {
		if strings.Contains(m, sub) {
			return true
		}
	}
	return false
}

func TestMaintenanceIsolatesAFailingStream(t *testing.T) {
	b := setup(t)
	logs := &logRecorder{}
	in := b.newInbox(inbox.Config{GapTimeout: time.Minute, GapPolicy: inbox.GapSkip, MaintenanceInterval: time.Hour,
		Retention: time.Hour, Logger: slog.New(logs)})
	in.Handle("t", b.effect)
	b.start(in)
	batch := append(msgs("t", 3, "old"), seqMsg("good", 1), seqMsg("good", 3), seqMsg("broken", 1), seqMsg("broken", 3))
	if _, err := in.Store(b.ctx, batch...); err != nil {
		t.Fatal(err)
	}
	b.waitState("done", 5, 10*time.Second)
	// From now on, moving the broken stream's watermark fails.
	b.exec(`CREATE FUNCTION ` + b.q + `.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.stream = 'broken' AND NEW.next_seq <> OLD.next_seq THEN
				RAISE EXCEPTION 'broken stream refuses to move';
			END IF;
			RETURN NEW;
		END $$`)
	b.exec(`CREATE TRIGGER refuse BEFORE UPDATE ON ` + b.q + `.inbox_streams FOR EACH ROW EXECUTE FUNCTION ` + b.q + `.refuse()`)
	b.waitFor("both gaps to be stamped", 10*time.Second, func() bool {
		_ = inbox.MaintainOnce(in, b.ctx)
		return b.count(`SELECT count(*) FROM `+b.q+`.inbox_streams WHERE gap_since IS NOT NULL`) == 2
	})
	b.ageGaps()
	b.exec(`UPDATE ` + b.q + `.inbox_messages SET processed_at = now() - interval '2 hours' WHERE message_id LIKE 'old-%'`)
	if err := inbox.MaintainOnce(in, b.ctx); err != nil {
		t.Logf("maintenance: %v", err)
	}
	if n := b.count(`SELECT count(*) FROM ` + b.q + `.inbox_messages WHERE message_id LIKE 'old-%'`); n != 0 {
		t.Fatalf("%d expired rows left: cleanup did not run beside the failing stream", n)
	}
	b.waitFor("the good stream's gap to be skipped and seq 3 applied", 10*time.Second, func() bool {
		return b.count(`SELECT count(*) FROM `+b.q+`.effects WHERE stream = 'good' AND seq = 3`) == 1
	})
	// Not retried silently every interval: the broken stream is parked,
	// saying why, and the failure is logged.
	parked, err := in.ListStreams(b.ctx, inbox.StreamFilter{Parked: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(parked) != 1 || parked[0].Stream != "broken" || !strings.Contains(parked[0].ParkedReason, "refuses to move") {
		t.Fatalf("parked streams = %+v; want broken, parked with the error", parked)
	}
	if !logs.has("refuses to move") {
		t.Fatalf("the failing stream was not logged; logs: %q", logs.msgs)
	}
}

// skipPoisoned leaves seq 2 of stream a dead below the watermark: it fails
// once (poison), and an operator skips past it; 1 and 3 are applied.
func (b *bundle) skipPoisoned() (*inbox.Inbox, *counter) {
	b.t.Helper()
	in := b.newInbox(inbox.Config{})
	calls := &counter{}
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		if calls.add(m.ID) == 1 && m.Seq == 2 {
			return inbox.Permanent(errors.New("poison"))
		}
		return b.effect(ctx, tx, m)
	})
	if _, err := in.Store(b.ctx, seqMsg("a", 1), seqMsg("a", 2), seqMsg("a", 3), inbox.Message{ID: "u", Topic: "t"}); err != nil {
		b.t.Fatal(err)
	}
	b.start(in)
	b.waitState("dead", 1, 10*time.Second)
	if _, err := in.SkipStream(b.ctx, "", "a"); err != nil {
		b.t.Fatal(err)
	}
	b.waitState("done", 3, 10*time.Second)
	return in, calls
}

func TestRetryBelowWatermarkIsRefused(t *testing.T) {
	b := setup(t)
	in, calls := b.skipPoisoned()
	// Another dead message, retryable, in the same bulk retry.
	b.exec(`UPDATE ` + b.q + `.inbox_messages SET state = 'dead' WHERE message_id = 'u'`)
	n, err := in.RetryDeadMessages(b.ctx, inbox.MessageFilter{})
	var below *inbox.BelowWatermarkError
	if n != 1 || !errors.Is(err, inbox.ErrBelowWatermark) || !errors.As(err, &below) ||
		len(below.Messages) != 1 || below.Messages[0].Seq != 2 || below.Messages[0].Watermark != 4 {
		t.Fatalf("RetryDeadMessages = %d, %v; want 1 requeued and seq 2 refused below watermark 4", n, err)
	}
	b.waitFor("u to run again", 10*time.Second, func() bool { return calls.get("u") >= 2 })
	dead, err := in.ListMessages(b.ctx, inbox.MessageFilter{State: inbox.StateDead})
	if err != nil || len(dead) != 1 || dead[0].ID != "a-2" {
		t.Fatalf("dead after the refused retry = %+v, %v; want a-2 left dead", dead, err)
	}
	if err := in.RetryDeadMessage(b.ctx, dead[0].RowID); !errors.Is(err, inbox.ErrBelowWatermark) {
		t.Fatalf("RetryDeadMessage below the watermark = %v", err)
	}
	if c := calls.get("a-2"); c != 1 {
		t.Fatalf("a-2 ran %d times; a refused retry must not run it", c)
	}
}

func TestRetryOutOfOrderRunsBelowWatermark(t *testing.T) {
	b := setup(t)
	in, calls := b.skipPoisoned()
	dead, err := in.ListMessages(b.ctx, inbox.MessageFilter{State: inbox.StateDead})
	if err != nil || len(dead) != 1 {
		t.Fatalf("dead = %+v, %v", dead, err)
	}
	if err := in.RetryDeadMessage(b.ctx, dead[0].RowID, inbox.OutOfOrder()); err != nil {
		t.Fatal(err)
	}
	b.waitState("done", 4, 10*time.Second)
	if c := calls.get("a-2"); c != 2 {
		t.Fatalf("a-2 ran %d times, want 2 (the poisoned run and the out-of-order one)", c)
	}
	rows, err := b.pool.Query(b.ctx, `SELECT seq FROM `+b.q+`.effects WHERE stream = 'a' ORDER BY applied`)
	if err != nil {
		t.Fatal(err)
	}
	seqs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil || fmt.Sprint(seqs) != "[1 3 2]" {
		t.Fatalf("applied %v, %v; want [1 3 2]", seqs, err)
	}
	if next, _ := b.streamRow("a"); next != 4 {
		t.Fatalf("watermark %d after the out-of-order run, want 4 (unmoved)", next)
	}
	m, err := in.GetMessage(b.ctx, dead[0].RowID)
	if err != nil || m.State != inbox.StateDone || !m.OutOfOrder {
		t.Fatalf("a-2 after its out-of-order run = %+v, %v; want done and marked out of order", m, err)
	}
}
