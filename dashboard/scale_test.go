package dashboard_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/inboxkit/inbox/dashboard"
)

// TestPagesAtScale fills a schema with INBOX_DASHBOARD_SCALE rows (skipped
// when unset) and reports how long each page takes: the median of five
// loads. It measures, it does not judge: the figures depend on the machine.
//
//	INBOX_DASHBOARD_SCALE=1000000 go test -run TestPagesAtScale -v -timeout 30m ./dashboard/
func TestPagesAtScale(t *testing.T) {
	rows, _ := strconv.Atoi(os.Getenv("INBOX_DASHBOARD_SCALE"))
	if rows <= 0 {
		t.Skip("set INBOX_DASHBOARD_SCALE=1000000 to fill a schema and time the pages")
	}
	f := setup(t, dashboard.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	f.ctx = ctx
	start := time.Now()
	f.fill(rows)
	t.Logf("filled %d rows in %s", rows, time.Since(start).Round(time.Second))

	var deadID int64
	if err := f.pool.QueryRow(f.ctx, `SELECT id FROM `+f.q+`.inbox_messages WHERE state = 'dead' ORDER BY id LIMIT 1 OFFSET $1`, rows/40).Scan(&deadID); err != nil {
		t.Fatal(err)
	}
	fp := regexp.MustCompile(`name="fp" value="([0-9a-f]+)"`).FindStringSubmatch(f.mustGet("/ops/dead"))
	if fp == nil {
		t.Fatal("no group on the dead page")
	}
	pages := []string{
		"/ops/",
		"/ops/dead",
		"/ops/dead?topic=topic-3",
		"/ops/dead?error=timeout",
		"/ops/dead?since=10m",
		"/ops/dead?fp=" + fp[1],
		fmt.Sprintf("/ops/dead?before=%d", deadID),
		fmt.Sprintf("/ops/messages/%d", deadID),
		"/ops/streams",
		"/ops/stream?stream=stream-5",
	}
	for _, p := range pages {
		var times []time.Duration
		for range 5 {
			t0 := time.Now()
			status, _ := f.get(p)
			times = append(times, time.Since(t0))
			if status != http.StatusOK {
				t.Fatalf("GET %s: status %d", p, status)
			}
		}
		slices.Sort(times)
		t.Logf("%-32s median %6.0f ms  (min %4.0f, max %4.0f)", p, ms(times[2]), ms(times[0]), ms(times[4]))
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// fill inserts n messages: 60% done (processed over the last hour), 30%
// pending, 10% dead with a handful of failure patterns; a third of them
// ordered, over 10,000 streams, of which 50 are parked and 50 wait on a
// gap.
func (f *fixture) fill(n int) {
	f.t.Helper()
	sql := []string{
		`SET LOCAL synchronous_commit = off`,
		`INSERT INTO ` + f.q + `.inbox_messages
		    (source, message_id, topic, stream, seq, state, attempts, last_error, body, received_at, run_at, processed_at)
		SELECT 'default', 'm-' || g, 'topic-' || (g % 8),
		       CASE WHEN g % 3 = 0 THEN 'stream-' || (g % 10000) END,
		       CASE WHEN g % 3 = 0 THEN g / 10000 + 1 END,
		       CASE WHEN g % 10 < 6 THEN 'done' WHEN g % 10 < 9 THEN 'pending' ELSE 'dead' END,
		       CASE WHEN g % 10 = 9 THEN 10 ELSE 0 END,
		       CASE WHEN g % 10 <> 9 THEN NULL
		            WHEN g % 40 = 9 THEN format('order %s not found', g)
		            WHEN g % 40 = 19 THEN format('timeout after %s ms calling http://svc-%s/api', g % 997, g % 7)
		            WHEN g % 40 = 29 THEN format('customer %s is blocked', md5(g::text)::uuid)
		            ELSE format('duplicate key value violates unique constraint "ledger_pkey" (id=%s)', g) END,
		       CASE WHEN g % 10 < 6 THEN NULL ELSE '\x7b226f72646572223a2031327d'::bytea END,
		       now() - make_interval(secs => ($1 - g) * 3600.0 / $1),
		       now() - make_interval(secs => ($1 - g) * 3600.0 / $1),
		       CASE WHEN g % 10 < 6 THEN now() - make_interval(secs => ($1 - g) * 3600.0 / $1) END
		FROM generate_series(1, $1) g`,
		`INSERT INTO ` + f.q + `.inbox_streams (source, stream, next_seq)
		SELECT 'default', 'stream-' || s, coalesce((SELECT min(seq) FROM ` + f.q + `.inbox_messages m
		    WHERE m.stream = 'stream-' || s AND m.state = 'pending'), 1)
		FROM generate_series(0, 9999) s`,
		`UPDATE ` + f.q + `.inbox_streams SET parked_at = now(), parked_reason = 'message is dead: boom'
		WHERE stream IN (SELECT 'stream-' || s FROM generate_series(0, 49) s)`,
		`UPDATE ` + f.q + `.inbox_streams SET gap_since = now(), next_seq = next_seq - 1
		WHERE stream IN (SELECT 'stream-' || s FROM generate_series(50, 99) s)`,
	}
	tx, err := f.pool.Begin(f.ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	defer tx.Rollback(f.ctx)
	for _, s := range sql {
		args := []any{}
		if slices.Contains([]byte(s), '$') {
			args = append(args, n)
		}
		if _, err := tx.Exec(f.ctx, s, args...); err != nil {
			f.t.Fatalf("%s: %v", s, err)
		}
	}
	if err := tx.Commit(f.ctx); err != nil {
		f.t.Fatal(err)
	}
	if _, err := f.pool.Exec(f.ctx, `VACUUM ANALYZE `+f.q+`.inbox_messages`); err != nil {
		f.t.Fatal(err)
	}
	if _, err := f.pool.Exec(f.ctx, `VACUUM ANALYZE `+f.q+`.inbox_streams`); err != nil {
		f.t.Fatal(err)
	}
}
