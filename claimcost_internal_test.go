package inbox

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/inboxkit/inbox/internal/sqlident"
	"github.com/inboxkit/inbox/internal/testenv"
)

// TestClaimsDoNotReadBlockedRows checks, in the plans the server actually
// ran, that the claims and the gap sweep read no message that cannot run:
// beside one runnable message and one runnable stream lie pending rows of a
// topic without a handler and a stream that waits on a gap, many of each.
// Rows counted are those the scans of inbox_messages returned or filtered
// out; the bound is far below the blocked rows and far above the few the
// statements need.
func TestClaimsDoNotReadBlockedRows(t *testing.T) {
	t.Parallel()
	ctx, pool, schema, in := newPlanFixture(t)
	const blocked = 1000
	var msgs []Message
	for i := range blocked {
		msgs = append(msgs,
			Message{ID: fmt.Sprintf("u-%d", i), Topic: "unhandled"},
			// Sequence 1 never comes: the stream waits on a gap.
			Message{ID: fmt.Sprintf("g-%d", i), Topic: "t", Stream: "gapped", Seq: int64(i + 2)})
	}
	msgs = append(msgs, Message{ID: "run", Topic: "t"}, Message{ID: "s-1", Topic: "t", Stream: "ready", Seq: 1})
	for from := 0; from < len(msgs); from += 500 {
		if _, err := in.Store(ctx, msgs[from:min(from+500, len(msgs))]...); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pool.Exec(ctx, `ANALYZE `+sqlident.Quote(schema)+`.inbox_messages`); err != nil {
		t.Fatal(err)
	}
	topics := []string{"t"}
	for _, c := range []struct {
		name string
		sql  string
		args []any
		want int // rows the statement returns
	}{
		{"unordered claim", in.e.sql.claimUnordered, []any{50, topics, []time.Time{{}}}, 1},
		{"stream claim", in.e.sql.claimStreams, []any{8, topics}, 1},
		{"gap sweep", in.e.sql.findGaps, []any{60.0, 1000}, 1},
		{"suspect claim", in.e.sql.claimSuspect, []any{topics}, 0},
		{"suspect stream claim", in.e.sql.claimSuspectStream, []any{topics}, 0},
	} {
		returned, read := explainRows(t, ctx, pool, "inbox_messages", "", c.sql, c.args...)
		if returned != c.want {
			t.Errorf("%s returned %d rows, want %d", c.name, returned, c.want)
		}
		if read > 100 {
			t.Errorf("%s read %d rows of inbox_messages beside %d blocked ones; it must read only what it returns", c.name, read, 2*blocked)
		}
	}
}

// newPlanFixture makes an Inbox on a schema of its own with a handler for
// topic "t", for the tests that read plans.
func newPlanFixture(t *testing.T) (context.Context, *pgxpool.Pool, string, *Inbox) {
	t.Helper()
	pool, schema := testenv.Schema(t, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	in, err := New(pool, Config{Schema: schema, DisableListen: true})
	if err != nil {
		t.Fatal(err)
	}
	in.Handle("t", func(context.Context, pgx.Tx, *Message) error { return nil })
	return ctx, pool, schema, in
}

// explainRows runs sql under EXPLAIN ANALYZE, in a transaction rolled back
// after (and after the statement before, unless it is empty), and returns
// the rows of its top node and the rows that its scans of table produced
// or removed by filter.
func explainRows(t *testing.T, ctx context.Context, db beginner, table, before, sql string, args ...any) (returned, read int) {
	t.Helper()
	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer rollback(tx)
	if before != "" {
		if _, err := tx.Exec(ctx, before); err != nil {
			t.Fatal(err)
		}
	}
	var plans []map[string]any
	if err := tx.QueryRow(ctx, "EXPLAIN (ANALYZE, FORMAT JSON) "+sql, args...).Scan(&plans); err != nil {
		t.Fatalf("explain: %v\n%s", err, sql)
	}
	return planRows(plans, table)
}

// planRows reads an EXPLAIN (ANALYZE, FORMAT JSON) result: the rows of its
// top node, and the rows that its scans of tables produced or removed by
// filter, over all their loops.
func planRows(plans []map[string]any, tables ...string) (returned, read int) {
	top := plans[0]["Plan"].(map[string]any)
	var walk func(n map[string]any)
	walk = func(n map[string]any) {
		if r, _ := n["Relation Name"].(string); slices.Contains(tables, r) {
			loops, _ := n["Actual Loops"].(float64)
			rows, _ := n["Actual Rows"].(float64)
			removed, _ := n["Rows Removed by Filter"].(float64)
			read += int((rows + removed) * max(loops, 1))
		}
		children, _ := n["Plans"].([]any)
		for _, c := range children {
			walk(c.(map[string]any))
		}
	}
	walk(top)
	return int(top["Actual Rows"].(float64)), read
}

// TestOutboxClaimReadsOnlyWhatItReturns: on an outbox table whose
// statistics predate a burst of enqueues (here: never analyzed), the
// planner expects fewer pending rows than the claim's limit. The claim must
// still walk the pending index in order and stop at its limit, not read the
// whole backlog and sort it, which made every claim cost the backlog.
func TestOutboxClaimReadsOnlyWhatItReturns(t *testing.T) {
	t.Parallel()
	pool, schema := testenv.Schema(t, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ob, err := NewOutbox(pool, OutboxConfig{Schema: schema, DisableListen: true})
	if err != nil {
		t.Fatal(err)
	}
	const backlog, limit = 5000, 100
	for from := 0; from < backlog; from += 1000 {
		msgs := make([]OutgoingMessage, 1000)
		for i := range msgs {
			msgs[i] = OutgoingMessage{RoutingKey: "q", Type: "t", Body: []byte("body")}
		}
		if _, err := ob.Send(ctx, msgs...); err != nil {
			t.Fatal(err)
		}
	}
	returned, read := explainRows(t, ctx, pool, "outbox_messages", inIndexOrder, ob.sql.claim, limit)
	if returned != limit {
		t.Errorf("the claim returned %d rows, want %d", returned, limit)
	}
	if read > 2*limit {
		t.Errorf("the claim read %d rows of outbox_messages for %d (backlog %d); it must stop at its limit", read, limit, backlog)
	}
	// And Claim itself, which runs the pair, returns the oldest first.
	c, err := ob.Claim(ctx, limit)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	for i := 1; i < len(c.Messages); i++ {
		if c.Messages[i].RowID <= c.Messages[i-1].RowID {
			t.Fatalf("claim out of enqueue order at %d: %d after %d", i, c.Messages[i].RowID, c.Messages[i-1].RowID)
		}
	}
}

// TestKeyedStatementsUnderStaleStatistics: statements that work on given
// messages or streams must find them through their keys whatever the
// statistics say. Here, as in a soak, the tables were analyzed while
// almost nothing was pending, and then a burst arrived: the planner then
// takes every partial index of pending rows for nearly empty, and a full
// scan of one, checking each entry against the key, costs no more than a
// lookup. Every claim, settle and stream refresh then cost the backlog,
// and a growing backlog made them slower still (stalls of seconds).
func TestKeyedStatementsUnderStaleStatistics(t *testing.T) {
	t.Parallel()
	t.Run("analyzed when nearly empty", func(t *testing.T) { testKeyedStatements(t, true) })
	t.Run("never analyzed", func(t *testing.T) { testKeyedStatements(t, false) })
}

func testKeyedStatements(t *testing.T, analyze bool) {
	t.Parallel()
	ctx, pool, schema, in := newPlanFixture(t)
	q := sqlident.Quote(schema)
	// A queue in its steady state: many rows handled, almost none pending.
	var handled []Message
	for i := range 2000 {
		handled = append(handled, Message{ID: fmt.Sprintf("h-%d", i), Topic: "t", Stream: fmt.Sprintf("h-%d", i%50), Seq: int64(i/50 + 1)})
	}
	if _, err := in.Store(ctx, handled...); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE `+q+`.inbox_messages SET state = 'done', processed_at = now() WHERE message_id <> 'h-0'`); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"inbox_messages", "inbox_streams", "inbox_stream_heads", "inbox_attempt_starts"} {
		if !analyze {
			break
		}
		// Statistics from then: nearly nothing pending.
		if _, err := pool.Exec(ctx, `VACUUM ANALYZE `+q+`.`+table); err != nil {
			t.Fatal(err)
		}
	}
	const backlog = 6000
	var msgs []Message
	for i := range backlog / 3 {
		msgs = append(msgs,
			Message{ID: fmt.Sprintf("u-%d", i), Topic: "t"},
			Message{ID: fmt.Sprintf("s-%d", i), Topic: "t", Stream: fmt.Sprintf("s-%d", i%50), Seq: int64(i/50 + 1)})
	}
	for from := 0; from < len(msgs); from += 500 {
		if _, err := in.Store(ctx, msgs[from:min(from+500, len(msgs))]...); err != nil {
			t.Fatal(err)
		}
	}
	// Two suspects, one of each kind: started, and held by no claim.
	if _, err := pool.Exec(ctx, `INSERT INTO `+q+`.inbox_attempt_starts (id, deaths)
SELECT id, 0 FROM `+q+`.inbox_messages WHERE message_id IN ('u-7', 's-7')`); err != nil {
		t.Fatal(err)
	}
	var id int64
	if err := pool.QueryRow(ctx, `SELECT id FROM `+q+`.inbox_messages WHERE message_id = 'u-9'`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	topics := []string{"t"}
	one := []string{"s-7"}
	for _, c := range []struct {
		name     string
		sql      string
		args     []any
		want     int    // rows the statement returns
		readable int    // rows of inbox_messages it may read
		before   string // a statement before it, as its caller runs it
	}{
		{"suspect claim", in.e.sql.claimSuspect, []any{topics}, 1, 2, ""},
		{"suspect stream claim", in.e.sql.claimSuspectStream, []any{topics}, 1, 2, ""},
		{"stream load", in.e.sql.loadStream, []any{DefaultSource, "s-7", 5, int64(1)}, 5, 6, ""},
		{"head refresh", in.e.sql.refreshHeads, []any{[]string{DefaultSource}, one}, 0, 3, ""},
		{"retention cleanup", in.e.sql.cleanup, []any{0.0, 10}, 0, 20, inIndexOrder},
		{"broken attempt", in.e.sql.countBrokenAttempt, []any{id, 0, "x", 1.0, false, ""}, 1, 2, ""},
	} {
		returned, read := explainRows(t, ctx, pool, "inbox_messages", c.before, c.sql, c.args...)
		if returned != c.want {
			t.Errorf("%s returned %d rows, want %d", c.name, returned, c.want)
		}
		if read > c.readable {
			t.Errorf("%s read %d rows of inbox_messages beside a backlog of %d; it must find its rows by their keys",
				c.name, read, backlog)
		}
	}
}

// TestUnorderedClaimStartsAtItsFloor: the entries of handled messages lie
// at the old end of the claims' index until vacuum removes them. A claim
// given its topic's floor starts after them; one from the beginning steps
// over every one (here an hour's worth, never vacuumed).
func TestUnorderedClaimStartsAtItsFloor(t *testing.T) {
	t.Parallel()
	ctx, pool, schema, in := newPlanFixture(t)
	q := sqlident.Quote(schema)
	// Stored and handled an hour ago, and not vacuumed since.
	if _, err := pool.Exec(ctx, `INSERT INTO `+q+`.inbox_messages (source, message_id, topic, body, run_at)
SELECT $1, 'h-' || i, 't', '', now() - interval '1 hour' FROM generate_series(1, 10000) i`, DefaultSource); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE `+q+`.inbox_messages SET state = 'done', processed_at = now()`); err != nil {
		t.Fatal(err)
	}
	if _, err := in.Store(ctx, Message{ID: "new", Topic: "t"}); err != nil {
		t.Fatal(err)
	}
	blocks := func(floor time.Time) int {
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer rollback(tx)
		var plans []map[string]any
		if err := tx.QueryRow(ctx, "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "+in.e.sql.claimUnordered,
			50, []string{"t"}, []time.Time{floor}).Scan(&plans); err != nil {
			t.Fatal(err)
		}
		top := plans[0]["Plan"].(map[string]any)
		if rows := top["Actual Rows"].(float64); rows != 1 {
			t.Fatalf("the claim returned %v rows, want the new message", rows)
		}
		hit, _ := top["Shared Hit Blocks"].(float64)
		read, _ := top["Shared Read Blocks"].(float64)
		return int(hit + read)
	}
	fromStart := blocks(noFloor)
	fromFloor := blocks(time.Now().Add(-floorMargin))
	t.Logf("blocks touched: %d from the beginning, %d from the floor", fromStart, fromFloor)
	if fromFloor*4 > fromStart {
		t.Errorf("the claim from its floor touched %d blocks, from the beginning %d: the floor must skip the handled entries",
			fromFloor, fromStart)
	}
}

// TestMessageBelowTheFloorIsClaimed: a message that appears below its
// topic's floor (a store that committed long after its run_at) is found by
// the claim from the beginning that comes once a second.
func TestMessageBelowTheFloorIsClaimed(t *testing.T) {
	t.Parallel()
	pool, schema := testenv.Schema(t, 6)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	in, err := New(pool, Config{Schema: schema, DisableListen: true, PollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	handled := make(chan string, 100) // drained as the test goes; never blocks a handler at Stop
	in.Handle("t", func(_ context.Context, _ pgx.Tx, m *Message) error {
		select {
		case handled <- m.ID:
		default:
		}
		return nil
	})
	if err := in.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := in.Stop(context.Background()); err != nil {
			t.Error(err)
		}
	}()
	if _, err := in.Store(ctx, Message{ID: "first", Topic: "t"}); err != nil {
		t.Fatal(err)
	}
	if id := <-handled; id != "first" {
		t.Fatalf("handled %q first", id)
	}
	// Keep the floor up while the late one waits: a steady trickle.
	if _, err := pool.Exec(ctx, `INSERT INTO `+sqlident.Quote(schema)+`.inbox_messages (source, message_id, topic, body, run_at)
VALUES ($1, 'late', 't', '', now() - interval '1 hour')`, DefaultSource); err != nil {
		t.Fatal(err)
	}
	in.e.wake.signal()
	deadline := time.After(20 * time.Second)
	for i := 0; ; i++ {
		if _, err := in.Store(ctx, Message{ID: fmt.Sprintf("trickle-%d", i), Topic: "t"}); err != nil {
			t.Fatal(err)
		}
		select {
		case id := <-handled:
			if id == "late" {
				return
			}
		case <-deadline:
			t.Fatal("the message below the floor was never claimed")
		}
	}
}

// TestClaimsStopAtTheirLimitInGenericPlans: after five runs PostgreSQL may
// run a prepared statement, as pgx prepares them, with a generic plan, made
// without the arguments' values and kept while the tables change under it.
// Made while a queue is quiet, it expects few due rows and few attempt
// starts; then a backlog builds and the attempt starts churn. Such plans
// read and sorted every due row in each claim (in a soak, 580 ms a claim,
// sorting on disk), or scanned the attempt starts for each due row (51 s
// for one claim). The claims and a stream's load, after claimPlanning, and
// the head refresh and the gap sweep, planned afresh (customPlans), must
// still stop at their limits.
func TestClaimsStopAtTheirLimitInGenericPlans(t *testing.T) {
	t.Parallel()
	// A database of its own: another test's new schema would make the
	// connection replan, hiding a plan that stuck.
	pool, schema := testenv.Database(t, 4)
	ctx := t.Context()
	in, err := New(pool, Config{Schema: schema, DisableListen: true})
	if err != nil {
		t.Fatal(err)
	}
	in.Handle("t", func(context.Context, pgx.Tx, *Message) error { return nil })
	q := sqlident.Quote(schema)
	store := func(from, to int) {
		var msgs []Message
		for i := from; i < to; i++ {
			msgs = append(msgs,
				Message{ID: fmt.Sprintf("u-%d", i), Topic: "t"},
				Message{ID: fmt.Sprintf("s-%d", i), Topic: "t", Stream: fmt.Sprintf("s-%d", i), Seq: 1},
				Message{ID: fmt.Sprintf("long-%d", i), Topic: "t", Stream: "long", Seq: int64(i + 1)})
		}
		for f := 0; f < len(msgs); f += 600 {
			if _, err := in.Store(ctx, msgs[f:min(f+600, len(msgs))]...); err != nil {
				t.Fatal(err)
			}
		}
	}
	exec := func(sqls ...string) {
		for _, sql := range sqls {
			if _, err := pool.Exec(ctx, sql); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
	}
	// Quiet: a few messages, a few attempt starts, fresh statistics.
	store(0, 3)
	exec(`INSERT INTO `+q+`.inbox_attempt_starts (id) SELECT g FROM generate_series(-3, -1) g`,
		`ANALYZE `+q+`.inbox_messages`, `ANALYZE `+q+`.inbox_stream_heads`, `ANALYZE `+q+`.inbox_attempt_starts`)
	cases := []struct {
		name, before, sql, args string
		limit                   int
	}{
		{"unordered claim", claimPlanning, in.e.sql.claimUnordered, `50, ARRAY['t'], ARRAY['-infinity'::timestamptz]`, 50},
		{"stream claim", claimPlanning, in.e.sql.claimStreams, `8, ARRAY['t']`, 8},
		{"stream load", claimPlanning, in.e.sql.loadStream, `'` + DefaultSource + `', 'long', 20, 1`, 20},
		{"head refresh", customPlans, in.e.sql.refreshHeads, `ARRAY['` + DefaultSource + `'], ARRAY['long']`, 0},
		{"gap sweep", customPlans, in.e.sql.findGaps, `60.0, 1000`, 0},
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	for i, c := range cases {
		name := fmt.Sprintf("inbox_generic_%d", i)
		if _, err := conn.Exec(ctx, "PREPARE "+name+" AS "+c.sql); err != nil {
			t.Fatalf("prepare %s: %v", c.name, err)
		}
		defer func() { _, _ = conn.Exec(context.Background(), "DEALLOCATE "+name) }()
		// Its generic plan, made now and cached with the statement.
		explainGenericRows(t, ctx, conn, c.before, name, c.args)
	}
	// A backlog, and attempt starts that came and went by the thousand.
	const backlog = 6000
	store(3, backlog/3)
	exec(`INSERT INTO `+q+`.inbox_attempt_starts (id) SELECT g FROM generate_series(-30000, -4) g`,
		`DELETE FROM `+q+`.inbox_attempt_starts WHERE id < -300`)
	for i, c := range cases {
		returned, read := explainGenericRows(t, ctx, conn, c.before, fmt.Sprintf("inbox_generic_%d", i), c.args)
		if returned != c.limit {
			t.Errorf("%s returned %d rows, want %d", c.name, returned, c.limit)
		}
		if read > 4*max(c.limit, 5) {
			t.Errorf("%s, planned generically while the queue was quiet, read %d rows of inbox_messages, "+
				"inbox_stream_heads and inbox_attempt_starts for %d (backlog %d); it must stop at its limit",
				c.name, read, c.limit, backlog)
		}
	}
}

// explainGenericRows runs the prepared statement name, after before (unless
// empty), with its generic plan, on the arguments args (SQL literals),
// under EXPLAIN ANALYZE in a transaction rolled back after, and returns the
// rows of its top node and the rows its scans of the message, head and
// attempt start tables produced or removed by filter.
func explainGenericRows(t *testing.T, ctx context.Context, conn *pgxpool.Conn, before, name, args string) (returned, read int) {
	t.Helper()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer rollback(tx)
	for _, s := range []string{"SET LOCAL plan_cache_mode = force_generic_plan", before} {
		if s == "" {
			continue
		}
		if _, err := tx.Exec(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	var plans []map[string]any
	if err := tx.QueryRow(ctx, "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE "+name+"("+args+")").Scan(&plans); err != nil {
		t.Fatalf("explain: %v", err)
	}
	if _, ok := plans[0]["JIT"]; ok {
		t.Errorf("the plan of %s was compiled (JIT), which costs up to seconds a claim", name)
	}
	return planRows(plans, "inbox_messages", "inbox_stream_heads", "inbox_attempt_starts")
}
