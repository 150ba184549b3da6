package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/internal/testenv"
)

func seqMsg(stream string, seq int64) inbox.Message {
	return inbox.Message{ID: fmt.Sprintf("%s-%d", stream, seq), Topic: "t", Stream: stream, Seq: seq}
}

// checkOrder asserts each stream's effects were applied in strictly
// increasing sequence, without holes, from 1 to want.
func (b *bundle) checkOrder(want map[string]int64) {
	b.t.Helper()
	rows, err := b.pool.Query(b.ctx, `SELECT stream, seq FROM `+b.q+`.effects WHERE stream IS NOT NULL ORDER BY applied`)
	if err != nil {
		b.t.Fatal(err)
	}
	last := map[string]int64{}
	var stream string
	var seq int64
	if _, err := pgx.ForEachRow(rows, []any{&stream, &seq}, func() error {
		if seq != last[stream]+1 {
			return fmt.Errorf("stream %s: applied seq %d after %d", stream, seq, last[stream])
		}
		last[stream] = seq
		return nil
	}); err != nil {
		b.t.Fatal(err)
	}
	for s, n := range want {
		if last[s] != n {
			b.t.Fatalf("stream %s: last applied seq %d, want %d", s, last[s], n)
		}
	}
}

func TestStreamsInOrderAcrossInstances(t *testing.T) {
	b := setup(t)
	const streams, perStream = 100, 100
	var all []inbox.Message
	want := map[string]int64{}
	for s := 0; s < streams; s++ {
		name := fmt.Sprintf("s%03d", s)
		want[name] = perStream
		for q := int64(1); q <= perStream; q++ {
			all = append(all, seqMsg(name, q))
		}
	}
	rng := rand.New(rand.NewSource(1))
	// 5% duplicates, then a full shuffle: sequences arrive out of order.
	for i := 0; i < len(all)/20; i++ {
		all = append(all, all[rng.Intn(streams*perStream)])
	}
	rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })

	var instances []*inbox.Inbox
	for i := 0; i < 2; i++ {
		pool := testenv.Pool(t, fmt.Sprintf("%s_i%d", b.schema, i), 12)
		in, err := inbox.New(pool, inbox.Config{Schema: b.schema, Workers: 8, PollInterval: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		in.Handle("t", b.effect)
		instances = append(instances, in)
		b.start(in)
	}
	for i := 0; i < len(all); i += 200 {
		end := min(i+200, len(all))
		if _, err := instances[(i/200)%2].Store(b.ctx, all[i:end]...); err != nil {
			t.Fatal(err)
		}
	}
	b.waitState("done", streams*perStream, 2*time.Minute)
	b.checkOrder(want)
	if n := b.count(`SELECT count(*) FROM ` + b.q + `.effects`); n != streams*perStream {
		t.Fatalf("effects = %d, want %d", n, streams*perStream)
	}
}

func TestGapWaitsThenLateMessageResumes(t *testing.T) {
	b := setup(t)
	in := b.newInbox(inbox.Config{GapTimeout: time.Hour})
	in.Handle("t", b.effect)
	b.start(in)
	if _, err := in.Store(b.ctx, seqMsg("a", 1), seqMsg("a", 3), seqMsg("a", 4)); err != nil {
		t.Fatal(err)
	}
	b.waitState("done", 1, 10*time.Second)
	// One Store stored 1, 3 and 4 together, so the claim that handled 1 saw
	// 3 and 4 and decided on them before it committed; while 2 is missing,
	// no later claim takes the stream.
	if n := b.count(`SELECT count(*) FROM ` + b.q + `.effects`); n != 1 {
		t.Fatalf("effects = %d while seq 2 is missing, want 1", n)
	}
	gaps, err := in.ListStreams(b.ctx, inbox.StreamFilter{Gap: true})
	if err != nil || len(gaps) != 1 || gaps[0].NextSeq != 2 || gaps[0].HeadSeq != 3 {
		t.Fatalf("gap streams = %+v, %v", gaps, err)
	}
	if _, err := in.Store(b.ctx, seqMsg("a", 2)); err != nil {
		t.Fatal(err)
	}
	b.waitState("done", 4, 10*time.Second)
	b.checkOrder(map[string]int64{"a": 4})
	// Below the watermark is a duplicate, with or without a row to match.
	b.exec(`DELETE FROM ` + b.q + `.inbox_messages`)
	res, err := in.Store(b.ctx, seqMsg("a", 2), inbox.Message{ID: "other-id", Topic: "t", Stream: "a", Seq: 3})
	if err != nil || res.Duplicates != 2 {
		t.Fatalf("store below watermark = %+v, %v; want 2 duplicates", res, err)
	}
}

func TestGapPolicies(t *testing.T) {
	for _, policy := range []inbox.GapPolicy{inbox.GapWait, inbox.GapSkip, inbox.GapPark} {
		t.Run(policy.String(), func(t *testing.T) {
			b := setup(t)
			in := b.newInbox(inbox.Config{GapTimeout: 100 * time.Millisecond, GapPolicy: policy, MaintenanceInterval: 50 * time.Millisecond})
			in.Handle("t", b.effect)
			b.start(in)
			if _, err := in.Store(b.ctx, seqMsg("a", 1), seqMsg("a", 3)); err != nil {
				t.Fatal(err)
			}
			switch policy {
			case inbox.GapWait:
				// The sweep that reports the expired wait is the one that
				// would have skipped or parked the stream.
				b.waitFor("the expired wait reported", 10*time.Second, func() bool {
					return b.count(`SELECT count(*) FROM `+b.q+`.inbox_streams WHERE gap_reported`) == 1
				})
				s, err := in.ListStreams(b.ctx, inbox.StreamFilter{Gap: true})
				if err != nil {
					t.Fatal(err)
				}
				if len(s) != 1 || s[0].NextSeq != 2 || s[0].ParkedAt != nil {
					t.Fatalf("waiting stream = %+v", s)
				}
				b.checkOrder(map[string]int64{"a": 1})
			case inbox.GapSkip:
				b.waitState("done", 2, 10*time.Second)
				s, err := in.ListStreams(b.ctx, inbox.StreamFilter{All: true})
				if err != nil {
					t.Fatal(err)
				}
				if len(s) != 1 || s[0].Skipped != 1 || !strings.Contains(s[0].LastSkip, "sequence 2..2") {
					t.Fatalf("skipped stream = %+v", s)
				}
			case inbox.GapPark:
				b.waitFor("the stream to park", 10*time.Second, func() bool {
					s, err := in.ListStreams(b.ctx, inbox.StreamFilter{Parked: true})
					if err != nil {
						t.Fatal(err)
					}
					return len(s) == 1 && strings.Contains(s[0].ParkedReason, "gap")
				})
				if _, err := in.SkipStream(b.ctx, "", "a"); err != nil {
					t.Fatal(err)
				}
				b.waitState("done", 2, 10*time.Second)
			}
		})
	}
}

func TestFailingMessageParksOnlyItsStream(t *testing.T) {
	b := setup(t)
	in := b.newInbox(inbox.Config{MaxAttempts: 2})
	var broken atomic.Bool
	broken.Store(true)
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		if m.Stream == "bad" && m.Seq == 2 && broken.Load() {
			return errors.New("cannot apply")
		}
		return b.effect(ctx, tx, m)
	})
	var batch []inbox.Message
	for q := int64(1); q <= 5; q++ {
		batch = append(batch, seqMsg("bad", q), seqMsg("good", q))
	}
	if _, err := in.Store(b.ctx, batch...); err != nil {
		t.Fatal(err)
	}
	b.start(in)
	b.waitFor("the bad stream to park", 10*time.Second, func() bool {
		s, _ := in.ListStreams(b.ctx, inbox.StreamFilter{Parked: true})
		return len(s) == 1 && s[0].Stream == "bad" && strings.Contains(s[0].ParkedReason, "cannot apply")
	})
	b.waitFor("the good stream to finish", 10*time.Second, func() bool {
		return b.count(`SELECT count(*) FROM `+b.q+`.effects WHERE stream = 'good'`) == 5
	})
	if n := b.count(`SELECT count(*) FROM ` + b.q + `.effects WHERE stream = 'bad'`); n != 1 {
		t.Fatalf("bad stream applied %d, want only seq 1", n)
	}
	// Retry: the failed message runs again, and the stream resumes.
	broken.Store(false)
	if _, err := in.RetryStream(b.ctx, "", "bad"); err != nil {
		t.Fatal(err)
	}
	b.waitState("done", 10, 10*time.Second)
	b.checkOrder(map[string]int64{"bad": 5, "good": 5})
}

func TestSkipParkedMessage(t *testing.T) {
	b := setup(t)
	in := b.newInbox(inbox.Config{})
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		if m.Seq == 2 {
			return inbox.Permanent(errors.New("poison"))
		}
		return b.effect(ctx, tx, m)
	})
	if _, err := in.Store(b.ctx, seqMsg("a", 1), seqMsg("a", 2), seqMsg("a", 3)); err != nil {
		t.Fatal(err)
	}
	b.start(in)
	b.waitState("dead", 1, 10*time.Second)
	b.waitFor("the stream to park", 10*time.Second, func() bool {
		s, _ := in.ListStreams(b.ctx, inbox.StreamFilter{Parked: true})
		return len(s) == 1
	})
	if _, err := in.SkipStream(b.ctx, "", "a"); err != nil {
		t.Fatal(err)
	}
	b.waitState("done", 2, 10*time.Second)
	rows, _ := b.pool.Query(b.ctx, `SELECT seq FROM `+b.q+`.effects ORDER BY applied`)
	seqs, _ := pgx.CollectRows(rows, pgx.RowTo[int64])
	if fmt.Sprint(seqs) != "[1 3]" {
		t.Fatalf("applied %v, want [1 3]", seqs)
	}
	if _, err := in.SkipStream(b.ctx, "", "nope"); !errors.Is(err, inbox.ErrNotFound) {
		t.Fatalf("skip unknown stream: %v", err)
	}
}

func TestStreamResumesInOrderAfterWorkerConnectionKilled(t *testing.T) {
	b := setup(t)
	in := b.newInbox(inbox.Config{Workers: 3})
	pids := make(chan uint32, 1)
	var killed atomic.Bool
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		if err := b.effect(ctx, tx, m); err != nil {
			return err
		}
		if m.Seq == 3 && killed.CompareAndSwap(false, true) {
			pids <- tx.Conn().PgConn().PID()
			time.Sleep(time.Second)
		}
		return nil
	})
	var batch []inbox.Message
	for q := int64(1); q <= 20; q++ {
		batch = append(batch, seqMsg("a", q))
	}
	if _, err := in.Store(b.ctx, batch...); err != nil {
		t.Fatal(err)
	}
	b.start(in)
	b.exec(`SELECT pg_terminate_backend($1)`, <-pids)
	b.waitState("done", 20, 30*time.Second)
	b.checkOrder(map[string]int64{"a": 20})
}

func TestBadInputsGetTypedErrors(t *testing.T) {
	b := setup(t)
	in := b.newInbox(inbox.Config{MaxBodyBytes: 10, StrictTopics: true})
	in.Handle("t", b.effect)
	cases := map[string]inbox.Message{
		inbox.ReasonMissingID:     {Topic: "t"},
		inbox.ReasonMissingTopic:  {ID: "x"},
		inbox.ReasonUnknownTopic:  {ID: "x", Topic: "nobody"},
		inbox.ReasonBodyTooLarge:  {ID: "x", Topic: "t", Body: make([]byte, 11)},
		inbox.ReasonBadSequence:   {ID: "x", Topic: "t", Stream: "s", Seq: 0},
		inbox.ReasonIDTooLong:     {ID: strings.Repeat("x", inbox.MaxIDBytes+1), Topic: "t"},
		inbox.ReasonInvalidText:   {ID: "x\x00y", Topic: "t"},
		inbox.ReasonStreamTooLong: {ID: "x", Topic: "t", Stream: strings.Repeat("s", inbox.MaxStreamBytes+1), Seq: 1},
	}
	for reason, m := range cases {
		_, err := in.Store(b.ctx, inbox.Message{ID: "fine", Topic: "t"}, m)
		var invalid *inbox.InvalidMessageError
		if !errors.As(err, &invalid) || invalid.Reason != reason || invalid.Index != 1 {
			t.Errorf("%s: got %v", reason, err)
		}
	}
	if n := b.count(`SELECT count(*) FROM ` + b.q + `.inbox_messages`); n != 0 {
		t.Fatalf("%d rows stored from invalid batches", n)
	}
	// Headers from untrusted publishers may hold NUL, which jsonb refuses.
	if _, err := in.Store(b.ctx, inbox.Message{ID: "h", Topic: "t", Headers: map[string]string{"k\x00": "v\x00"}}); err != nil {
		t.Fatalf("header with NUL: %v", err)
	}
	if _, err := inbox.New(b.pool, inbox.Config{Schema: "bad schema"}); err == nil {
		t.Fatal("invalid schema name accepted")
	}
	if _, err := inbox.New(b.pool, inbox.Config{Workers: -1}); err == nil || !strings.Contains(err.Error(), "Workers") {
		t.Fatalf("negative Workers: %v", err)
	}
}

func TestCleanupKeepsDedupForRetention(t *testing.T) {
	b := setup(t)
	in := b.newInbox(inbox.Config{Retention: time.Hour, CleanupBatch: 3})
	in.Handle("t", b.effect)
	if _, err := in.Store(b.ctx, msgs("t", 10, "m")...); err != nil {
		t.Fatal(err)
	}
	b.start(in)
	b.waitState("done", 10, 10*time.Second)
	b.exec(`UPDATE ` + b.q + `.inbox_messages SET processed_at = now() - interval '2 hours' WHERE message_id IN ('m-0','m-1','m-2','m-3','m-4','m-5','m-6')`)
	if err := inbox.MaintainOnce(in, b.ctx); err != nil {
		t.Fatal(err)
	}
	if n := b.count(`SELECT count(*) FROM ` + b.q + `.inbox_messages`); n != 3 {
		t.Fatalf("rows after cleanup = %d, want 3 within retention", n)
	}
	res, _ := in.Store(b.ctx, msgs("t", 10, "m")...)
	if res.Duplicates != 3 || res.Stored != 7 {
		t.Fatalf("after cleanup: %+v; keys within retention must still dedup", res)
	}
}
