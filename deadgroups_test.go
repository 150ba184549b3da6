package inbox_test

import (
	"fmt"
	"testing"

	"github.com/inboxkit/inbox"
)

// kill stores msgs and makes each dead with its error.
func (b *bundle) kill(in *inbox.Inbox, errs map[string]string) map[string]int64 {
	b.t.Helper()
	ids := map[string]int64{}
	for id, e := range errs {
		if _, err := in.Store(b.ctx, inbox.Message{ID: id, Topic: "orders"}); err != nil {
			b.t.Fatal(err)
		}
		var row int64
		if err := b.pool.QueryRow(b.ctx, `UPDATE `+b.q+`.inbox_messages SET state = 'dead', last_error = $2
			WHERE message_id = $1 RETURNING id`, id, e).Scan(&row); err != nil {
			b.t.Fatal(err)
		}
		ids[id] = row
	}
	return ids
}

func TestDeadGroupsMaskNumbersAndIDs(t *testing.T) {
	b := setup(t)
	in := b.newInbox(inbox.Config{})
	ids := b.kill(in, map[string]string{
		"a": "order 17 not found (trace 4bf92f3577b34da6a3ce929d0e0e4736)",
		"b": "order 20931 not found (trace 00f067aa0ba902b7aaaabbbbccccdddd)",
		"c": "order 5 not found (trace 0af7651916cd43dd8448eb211c80319c)",
		"d": "customer 8c4f1b0e-2f5a-4a5e-9a4b-0c6a1d2e3f40 is blocked",
		"e": "customer 0b9d3a1c-7e62-4f0d-8d2c-5e4a3b2c1d0e is blocked",
		"f": "timeout",
	})
	g, err := in.DeadGroups(b.ctx, inbox.DeadQuery{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, x := range g.Groups {
		got[x.Pattern] = x.Count
	}
	want := map[string]int64{
		"order # not found (trace <hex>)": 3,
		"customer <uuid> is blocked":      2,
		"timeout":                         1,
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || g.Scanned != 6 || g.Capped {
		t.Fatalf("groups %v (scanned %d, capped %v), want %v of 6", got, g.Scanned, g.Capped, want)
	}
	if g.Groups[0].Pattern != "order # not found (trace <hex>)" || g.Groups[0].NewestRowID == 0 {
		t.Fatalf("largest group first: got %+v", g.Groups[0])
	}

	// The group's messages list by fingerprint, newest first, by key.
	q := inbox.DeadQuery{Fingerprint: g.Groups[0].Fingerprint, Limit: 2}
	page1, err := in.ListDead(b.ctx, q)
	if err != nil || len(page1) != 2 || page1[0].RowID < page1[1].RowID {
		t.Fatalf("first page %v, %v: want 2 rows, newest first", page1, err)
	}
	q.BeforeRowID = page1[1].RowID
	page2, err := in.ListDead(b.ctx, q)
	if err != nil || len(page2) != 1 || page2[0].RowID >= page1[1].RowID {
		t.Fatalf("second page %v, %v: want the one older row", page2, err)
	}

	// Retrying the group requeues exactly its messages.
	n, err := in.RetryDeadGroup(b.ctx, inbox.DeadQuery{Fingerprint: g.Groups[1].Fingerprint})
	if err != nil || n != 2 {
		t.Fatalf("retry group: %d, %v; want 2", n, err)
	}
	for id, row := range ids {
		m, err := in.GetMessage(b.ctx, row)
		if err != nil {
			t.Fatal(err)
		}
		want := inbox.StateDead
		if id == "d" || id == "e" {
			want = inbox.StatePending
		}
		if m.State != want {
			t.Errorf("message %s is %s, want %s", id, m.State, want)
		}
	}
	n, err = in.DeleteDeadGroup(b.ctx, inbox.DeadQuery{Fingerprint: g.Groups[0].Fingerprint, Topic: "other"})
	if err != nil || n != 0 {
		t.Fatalf("delete group of another topic: %d, %v; want 0", n, err)
	}
}

func TestStreamDetailShowsMissingSequence(t *testing.T) {
	b := setup(t)
	in := b.newInbox(inbox.Config{})
	for _, seq := range []int64{3, 4} {
		if _, err := in.Store(b.ctx, inbox.Message{ID: fmt.Sprint(seq), Topic: "t", Stream: "s", Seq: seq}); err != nil {
			t.Fatal(err)
		}
	}
	b.exec(`UPDATE ` + b.q + `.inbox_streams SET gap_since = now() WHERE stream = 's'`)
	d, err := in.StreamDetail(b.ctx, "", "s")
	if err != nil {
		t.Fatal(err)
	}
	if d.NextSeq != 1 || d.HeadSeq != 3 || d.TailSeq != 4 || d.Pending != 2 || d.MissingFrom != 1 || d.MissingTo != 2 || len(d.Head) != 2 || d.Head[0].Seq != 3 {
		t.Fatalf("detail %+v: want watermark 1, head 3, tail 4, 2 pending, missing 1..2", d)
	}
	list, err := in.PageStreams(b.ctx, inbox.StreamQuery{State: "gap"})
	if err != nil || len(list) != 1 || list[0].Stream != "s" {
		t.Fatalf("gap streams %v, %v", list, err)
	}
	if _, err := in.StreamDetail(b.ctx, "", "nope"); err == nil {
		t.Fatal("a missing stream gave no error")
	}
}
