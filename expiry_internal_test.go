package inbox

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/inboxkit/inbox/internal/sqlident"
	"github.com/inboxkit/inbox/internal/testenv"
)

// expiryBundle is an Inbox whose stream "s" has applied some messages, with
// helpers to age the stream, run expiry in a transaction of the test's,
// and process what is pending.
type expiryBundle struct {
	t      *testing.T
	ctx    context.Context
	pool   *pgxpool.Pool
	schema string
	in     *Inbox

	mu      sync.Mutex
	applied []int64 // sequence numbers of stream "s", in handling order
	fail    bool    // the handler fails for good
}

func newExpiryBundle(t *testing.T) *expiryBundle {
	t.Parallel()
	pool, schema := testenv.Schema(t, 8)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	in, err := New(pool, Config{Schema: schema, DisableListen: true, PollInterval: 20 * time.Millisecond,
		MaintenanceInterval: time.Hour, IdleStreamExpiry: time.Hour, GapTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	b := &expiryBundle{t: t, ctx: ctx, pool: pool, schema: schema, in: in}
	in.Handle("t", func(_ context.Context, _ pgx.Tx, m *Message) error {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.fail {
			return Permanent(errors.New("refused"))
		}
		b.applied = append(b.applied, m.Seq)
		return nil
	})
	return b
}

func (b *expiryBundle) store(db batcher, id string, seq int64) StoreResult {
	b.t.Helper()
	res, err := b.in.e.store(b.ctx, db, []Message{{ID: id, Topic: "t", Stream: "s", Seq: seq}})
	if err != nil {
		b.t.Fatal(err)
	}
	return res
}

// process runs the workers until nothing is pending (but the message of
// stream "gapped", which waits on a gap) and n messages have been handled
// in all.
func (b *expiryBundle) process(n int) {
	b.t.Helper()
	if err := b.in.Start(b.ctx); err != nil {
		b.t.Fatal(err)
	}
	defer func() {
		if err := b.in.Stop(b.ctx); err != nil {
			b.t.Fatal(err)
		}
	}()
	b.waitFor("handled messages", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.applied) == n && b.count(`SELECT count(*) FROM `+b.table("inbox_messages")+` WHERE state = 'pending' AND stream NOT IN ('gapped')`) == 0
	})
}

// table is the test schema's table name, quoted.
func (b *expiryBundle) table(name string) string {
	return sqlident.Quote(b.schema) + "." + name
}

// age makes every stream look idle for two hours.
func (b *expiryBundle) age() {
	b.t.Helper()
	if _, err := b.pool.Exec(b.ctx, `UPDATE `+b.table("inbox_streams")+` SET updated_at = now() - interval '2 hours'`); err != nil {
		b.t.Fatal(err)
	}
}

// expire runs one expiry window on db and returns how many streams it deleted.
func (b *expiryBundle) expire(db querier) int64 {
	b.t.Helper()
	var seen, expired int64
	var source, stream string
	rows, err := db.Query(b.ctx, b.in.e.sql.expireStreams, "", "", 1000, time.Hour.Seconds())
	if err == nil {
		for rows.Next() {
			err = rows.Scan(&seen, &source, &stream, &expired)
		}
		rows.Close()
		err = errors.Join(err, rows.Err())
	}
	if err != nil {
		b.t.Fatal(err)
	}
	return expired
}

func (b *expiryBundle) count(sql string, args ...any) int {
	b.t.Helper()
	var n int
	if err := b.pool.QueryRow(b.ctx, sql, args...).Scan(&n); err != nil {
		b.t.Fatal(err)
	}
	return n
}

// watermark is stream s's next_seq, or 0 without a row; heads says
// whether it has a head row.
func (b *expiryBundle) watermark() (next int64, heads bool) {
	b.t.Helper()
	err := b.pool.QueryRow(b.ctx, `SELECT coalesce((SELECT next_seq FROM `+b.table("inbox_streams")+` WHERE stream = 's'), 0),
		EXISTS (SELECT 1 FROM `+b.table("inbox_stream_heads")+` WHERE stream = 's')`).Scan(&next, &heads)
	if err != nil {
		b.t.Fatal(err)
	}
	return next, heads
}

func (b *expiryBundle) waitFor(what string, cond func() bool) {
	b.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			b.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (b *expiryBundle) begin() (pgx.Tx, uint32) {
	b.t.Helper()
	tx, err := b.pool.Begin(b.ctx)
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { rollback(tx) })
	var pid uint32
	if err := tx.QueryRow(b.ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		b.t.Fatal(err)
	}
	return tx, pid
}

func (b *expiryBundle) commit(tx pgx.Tx) {
	b.t.Helper()
	if err := tx.Commit(b.ctx); err != nil {
		b.t.Fatal(err)
	}
}

// An expiry that locks the stream first, and a Store of a message of that
// stream that starts before the expiry commits: Store waits for the head
// row, then makes the stream again, at the watermark it judged the message
// by, and the message runs.
func TestExpiryBeforeStoreOfTheStream(t *testing.T) {
	b := newExpiryBundle(t)
	b.store(b.pool, "m1", 1)
	b.process(1)
	b.age()

	tx, pid := b.begin()
	if n := b.expire(tx); n != 1 {
		t.Fatalf("expired %d streams, want 1", n)
	}
	stored := make(chan StoreResult, 1)
	go func() {
		res, err := b.in.e.store(b.ctx, b.pool, []Message{{ID: "m2", Topic: "t", Stream: "s", Seq: 2}})
		if err != nil {
			t.Error(err)
		}
		stored <- res
	}()
	b.waitFor("Store to wait for the expiry's locks", func() bool {
		return b.count(`SELECT count(*) FROM pg_stat_activity WHERE $1::int = ANY (pg_blocking_pids(pid))`, pid) == 1
	})
	b.commit(tx)
	if res := <-stored; res.Stored != 1 {
		t.Fatalf("stored %d, want 1", res.Stored)
	}
	if next, heads := b.watermark(); next != 2 || !heads {
		t.Fatalf("after Store: stream row next_seq %d (0: none), head row %v; want 2 and a head row", next, heads)
	}
	b.process(2)
	if next, _ := b.watermark(); next != 3 {
		t.Fatalf("watermark %d after the message ran, want 3", next)
	}
}

// A Store that holds the stream's head row, uncommitted, makes expiry pass
// the stream over; once it commits, the stream has a pending message and
// is not idle; once that has run and the stream has idled, it expires.
func TestExpiryAfterStoreOfTheStream(t *testing.T) {
	b := newExpiryBundle(t)
	b.store(b.pool, "m1", 1)
	b.process(1)
	b.age()

	tx, _ := b.begin()
	b.store(tx, "m2", 2)
	if n := b.expire(b.pool); n != 0 {
		t.Fatalf("expired %d streams while Store held one, want 0", n)
	}
	b.commit(tx)
	if n := b.expire(b.pool); n != 0 {
		t.Fatalf("expired %d streams with a pending message, want 0", n)
	}
	b.process(2)
	if n := b.expire(b.pool); n != 0 {
		t.Fatalf("expired %d streams whose watermark just moved, want 0", n)
	}
	b.age()
	if n := b.expire(b.pool); n != 1 {
		t.Fatalf("expired %d streams, want 1", n)
	}
}

// What an expired stream forgets, and what it does not: a redelivery of a
// message whose row is within Retention is still a duplicate by its ID; a
// new message starts the stream again at FirstSeq.
func TestExpiredStreamStartsAgain(t *testing.T) {
	b := newExpiryBundle(t)
	b.store(b.pool, "m1", 1)
	b.store(b.pool, "m2", 2)
	b.process(2)
	b.age()
	if n, err := b.in.e.expireIdleStreams(b.ctx, b.pool); err != nil || n != 1 {
		t.Fatalf("expireIdleStreams: %d, %v; want 1 stream", n, err)
	}
	if next, heads := b.watermark(); next != 0 || heads {
		t.Fatalf("stream row next_seq %d, head row %v after expiry; want neither", next, heads)
	}
	if res := b.store(b.pool, "m2", 2); res.Duplicates != 1 {
		t.Fatalf("redelivery of m2: %+v, want a duplicate", res)
	}
	// A different ID with an applied sequence number is new now.
	if res := b.store(b.pool, "m1-again", 1); res.Stored != 1 {
		t.Fatalf("m1-again: %+v, want stored", res)
	}
	b.process(3)
	b.mu.Lock()
	defer b.mu.Unlock()
	if want := []int64{1, 2, 1}; len(b.applied) != 3 || b.applied[2] != want[2] {
		t.Fatalf("applied %v, want %v", b.applied, want)
	}
}

// A stream with a pending message, a parked one and a busy one stay.
func TestExpirySparesStreamsInUse(t *testing.T) {
	b := newExpiryBundle(t)
	ctx := b.ctx
	msgs := []Message{
		{ID: "gap-3", Topic: "t", Stream: "gapped", Seq: 3},
		{ID: "park-1", Topic: "t", Stream: "parked", Seq: 1},
	}
	if _, err := b.in.Store(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `UPDATE `+b.table("inbox_messages")+` SET state = 'dead' WHERE message_id = 'park-1'`); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `UPDATE `+b.table("inbox_streams")+` SET parked_at = now(), parked_reason = 'test' WHERE stream = 'parked'`); err != nil {
		t.Fatal(err)
	}
	if err := pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		return b.in.e.refreshHeads(ctx, tx, streamKey{"default", "parked"})
	}); err != nil {
		t.Fatal(err)
	}
	b.store(b.pool, "m1", 1)
	b.process(1)
	b.age()
	// The worker's lock: a claim holds the stream row.
	tx, _ := b.begin()
	if _, err := tx.Exec(ctx, `SELECT 1 FROM `+b.table("inbox_streams")+` WHERE stream = 's' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	if n := b.expire(b.pool); n != 0 {
		t.Fatalf("expired %d streams, want 0", n)
	}
	b.commit(tx)
	if n := b.expire(b.pool); n != 1 {
		t.Fatalf("expired %d streams once unlocked, want 1 (s)", n)
	}
	if n := b.count(`SELECT count(*) FROM ` + b.table("inbox_streams")); n != 2 {
		t.Fatalf("%d streams left, want 2 (gapped, parked)", n)
	}
}

// A dead message requeued after its stream expired runs: the requeue makes
// the stream again, at FirstSeq.
func TestRequeueIntoExpiredStream(t *testing.T) {
	b := newExpiryBundle(t)
	ctx := b.ctx
	b.fail = true
	b.store(b.pool, "m1", 1)
	if err := b.in.Start(ctx); err != nil {
		t.Fatal(err)
	}
	b.waitFor("a dead message", func() bool {
		return b.count(`SELECT count(*) FROM `+b.table("inbox_messages")+` WHERE state = 'dead'`) == 1
	})
	if err := b.in.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	b.fail = false
	b.mu.Unlock()
	if _, err := b.in.SkipStream(ctx, "default", "s"); err != nil {
		t.Fatal(err)
	}
	b.age()
	if n := b.expire(b.pool); n != 1 {
		t.Fatalf("expired %d streams, want 1", n)
	}
	if n, err := b.in.RetryDeadMessages(ctx, MessageFilter{}); err != nil || n != 1 {
		t.Fatalf("RetryDeadMessages: %d, %v; want 1", n, err)
	}
	b.process(1)
	if next, heads := b.watermark(); next != 2 || !heads {
		t.Fatalf("stream row next_seq %d, head row %v; want 2 and a head row", next, heads)
	}
}

// One maintenance run expires the idle streams of every window, not only
// up to the first window without one.
func TestExpiryVisitsEveryWindow(t *testing.T) {
	b := newExpiryBundle(t)
	ctx := b.ctx
	b.in.e.cfg.CleanupBatch = 2
	names := []string{"a1", "a2", "b1", "b2", "c1"}
	for _, s := range names {
		if _, err := b.in.Store(ctx, Message{ID: s, Topic: "t", Stream: s, Seq: 1}); err != nil {
			t.Fatal(err)
		}
	}
	b.process(len(names))
	b.age()
	// The first window (a1, a2) has nothing to expire.
	if _, err := b.pool.Exec(ctx, `UPDATE `+b.table("inbox_streams")+` SET updated_at = now() WHERE stream LIKE 'a%'`); err != nil {
		t.Fatal(err)
	}
	if n, err := b.in.e.expireIdleStreams(ctx, b.pool); err != nil || n != 3 {
		t.Fatalf("expireIdleStreams: %d, %v; want 3 (b1, b2, c1)", n, err)
	}
}
