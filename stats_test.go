package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/inboxkit/inbox"
)

// statsScenario puts messages of every kind in an inbox and starts it:
//
//	ok          3 unordered, done
//	fail        1 dead (Permanent)
//	later       1 scheduled an hour ahead (RetryAfter)
//	nohandler   2 ready, no handler here, never claimed
//	ord         stream g: seq 1 done, seq 3 waits on the gap at 2
//	ordfail     stream p: seq 1 dead, which parks p; seq 2 waits
//	slow        1 unordered, its handler blocked until release
//	slowstream  stream s: seq 1 blocked until release, seq 2 waits
type statsScenario struct {
	*bundle
	in      *inbox.Inbox
	release func()
}

func newStatsScenario(t *testing.T) *statsScenario {
	b := setup(t)
	in := b.newInbox(inbox.Config{Workers: 4, MaxAttempts: 3, GapTimeout: time.Hour})
	ok := func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error { return nil }
	in.Handle("ok", ok)
	in.Handle("ord", ok)
	in.Handle("fail", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		return inbox.Permanent(errors.New("bad order"))
	})
	in.Handle("ordfail", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		return inbox.Permanent(errors.New("bad stream message"))
	})
	in.Handle("later", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		return inbox.RetryAfter(time.Hour, errors.New("not yet"))
	})
	gate := make(chan struct{})
	blocked := func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		select {
		case <-gate:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	in.Handle("slow", blocked)
	in.Handle("slowstream", blocked)

	stored := []inbox.Message{
		{ID: "ok-1", Topic: "ok"}, {ID: "ok-2", Topic: "ok"}, {ID: "ok-3", Topic: "ok"},
		{ID: "fail-1", Topic: "fail"},
		{ID: "later-1", Topic: "later"},
		{ID: "nh-1", Topic: "nohandler"}, {ID: "nh-2", Topic: "nohandler"},
		{ID: "g-1", Topic: "ord", Stream: "g", Seq: 1}, {ID: "g-3", Topic: "ord", Stream: "g", Seq: 3},
		{ID: "p-1", Topic: "ordfail", Stream: "p", Seq: 1}, {ID: "p-2", Topic: "ordfail", Stream: "p", Seq: 2},
	}
	if _, err := in.Store(b.ctx, stored...); err != nil {
		t.Fatal(err)
	}
	b.start(in)
	released := false
	release := func() {
		if !released {
			released = true
			close(gate)
		}
	}
	// Cleanups run last-in first-out: the handlers are released before
	// the inbox is stopped.
	t.Cleanup(release)
	b.waitFor("the scenario to settle", 30*time.Second, func() bool {
		return b.count(`SELECT count(*) FROM `+b.q+`.inbox_messages WHERE state = 'done'`) == 4 &&
			b.count(`SELECT count(*) FROM `+b.q+`.inbox_messages WHERE state = 'dead'`) == 2 &&
			b.count(`SELECT count(*) FROM `+b.q+`.inbox_messages WHERE message_id = 'later-1' AND attempts = 1`) == 1 &&
			b.count(`SELECT count(*) FROM `+b.q+`.inbox_streams WHERE gap_since IS NOT NULL`) == 1
	})
	// Stored only now, so that no worker's batch holds them together with
	// the messages above, whose outcome would then wait for the release.
	blockedMsgs := []inbox.Message{
		{ID: "slow-1", Topic: "slow"},
		{ID: "s-1", Topic: "slowstream", Stream: "s", Seq: 1}, {ID: "s-2", Topic: "slowstream", Stream: "s", Seq: 2},
	}
	if _, err := in.Store(b.ctx, blockedMsgs...); err != nil {
		t.Fatal(err)
	}
	return &statsScenario{bundle: b, in: in, release: release}
}

func TestStats(t *testing.T) {
	s := newStatsScenario(t)
	var st inbox.Stats
	// The blocked handlers are claimed by now or soon; wait until Stats sees
	// both, which also proves it finds running work.
	s.waitFor("both blocked messages to show as running", 30*time.Second, func() bool {
		var err error
		st, err = s.in.Stats(s.ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st.Total().Running == 2
	})
	got := map[string]inbox.TopicStats{}
	var names []string
	for _, ts := range st.Topics {
		got[ts.Topic] = ts
		names = append(names, ts.Topic)
	}
	if fmt.Sprint(names) != "[fail later nohandler ok ord ordfail slow slowstream]" {
		t.Fatalf("topics = %v", names)
	}
	type want struct{ ready, scheduled, running, done, dead, recent int64 }
	for topic, w := range map[string]want{
		"ok":         {done: 3, recent: 3},
		"fail":       {dead: 1},
		"later":      {scheduled: 1},
		"nohandler":  {ready: 2},
		"ord":        {ready: 1, done: 1, recent: 1},
		"ordfail":    {ready: 1, dead: 1},
		"slow":       {ready: 1, running: 1},
		"slowstream": {ready: 2, running: 1},
	} {
		g := got[topic]
		have := want{g.Ready, g.Scheduled, g.Running, g.Done, g.Dead, g.ProcessedLastMinute}
		if have != w {
			t.Errorf("%s: got %+v, want %+v", topic, have, w)
		}
		if pending := g.Pending() > 0; pending != (g.OldestPending > 0) {
			t.Errorf("%s: pending %d but oldest pending age %s", topic, g.Pending(), g.OldestPending)
		}
	}
	total := st.Total()
	if total.Done != 4 || total.Dead != 2 || total.Pending() != 8 || total.Running != 2 {
		t.Errorf("total = %+v", total)
	}
	sst := st.Streams
	if sst.Total != 3 || sst.Parked != 1 || sst.Gap != 1 || sst.Working != 1 {
		t.Errorf("streams = %+v, want 3 in all, 1 parked, 1 on a gap, 1 held", sst)
	}
	if sst.MaxLag <= 0 || (sst.MaxLagStream != "g" && sst.MaxLagStream != "p" && sst.MaxLagStream != "s") || sst.MaxLagSource != inbox.DefaultSource {
		t.Errorf("max lag = %s on %q/%q", sst.MaxLag, sst.MaxLagSource, sst.MaxLagStream)
	}
	if time.Since(st.TakenAt).Abs() > time.Minute {
		t.Errorf("TakenAt = %s, far from now", st.TakenAt)
	}

	// Released, the blocked messages finish and nothing runs any more.
	s.release()
	s.waitFor("the released messages to finish", 30*time.Second, func() bool {
		st, err := s.in.Stats(s.ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st.Total().Running == 0 && st.Streams.Working == 0 && st.Total().Done == 7
	})
}

func TestStatsEmptyAndUnmigrated(t *testing.T) {
	b := setup(t)
	in := b.newInbox(inbox.Config{})
	st, err := in.Stats(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Topics) != 0 || st.Streams != (inbox.StreamStats{}) {
		t.Fatalf("stats of an empty inbox = %+v", st)
	}
	b.exec(`DROP INDEX ` + b.q + `.inbox_messages_topic_pending`)
	if _, err := in.Stats(b.ctx); !errors.Is(err, inbox.ErrStatsNotMigrated) {
		t.Fatalf("stats without migration 2: %v, want ErrStatsNotMigrated", err)
	}
}
