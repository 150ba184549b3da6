package inbox_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/inboxkit/inbox"
)

func TestDuplicatesReachHandlerOnce(t *testing.T) {
	b := setup(t)
	in := b.newInbox(inbox.Config{Workers: 4})
	var calls counter
	in.Handle("t", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		calls.add(m.ID)
		return b.effect(ctx, tx, m)
	})
	first := msgs("t", 100, "m")
	res, err := in.Store(b.ctx, first...)
	if err != nil {
		t.Fatal(err)
	}
	if res.Stored != 100 || res.Duplicates != 0 {
		t.Fatalf("first store: %+v", res)
	}
	// Same IDs again, plus a duplicate inside one batch.
	again := append(msgs("t", 100, "m"), inbox.Message{ID: "m-1", Topic: "t"})
	res, err = in.Store(b.ctx, again...)
	if err != nil {
		t.Fatal(err)
	}
	if res.Stored != 0 || res.Duplicates != 101 {
		t.Fatalf("second store: %+v", res)
	}
	b.start(in)
	b.waitState("done", 100, 30*time.Second)
	// Duplicates arriving after processing are still recognised.
	res, err = in.Store(b.ctx, first[:10]...)
	if err != nil || res.Duplicates != 10 {
		t.Fatalf("store after processing: %+v, %v", res, err)
	}
	// A new message stored after them, once handled with nothing pending,
	// shows that any row the duplicates had wrongly created would have run.
	if _, err := in.Store(b.ctx, msgs("t", 1, "after")...); err != nil {
		t.Fatal(err)
	}
	b.waitFor("the later message handled and nothing pending", 30*time.Second, func() bool {
		return b.count(`SELECT count(*) FROM `+b.q+`.inbox_messages WHERE state = 'pending' OR message_id = 'after-0' AND state <> 'done'`) == 0
	})
	if n := b.count(`SELECT count(*) FROM ` + b.q + `.effects`); n != 101 {
		t.Fatalf("effects = %d, want 101", n)
	}
	for _, m := range first {
		if c := calls.get(m.ID); c != 1 {
			t.Fatalf("handler ran %d times for %s", c, m.ID)
		}
	}
}
