package inbox

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/inboxkit/inbox/internal/sqlident"
	"github.com/inboxkit/inbox/internal/testenv"
)

// TestStatsQueriesUseIndexes checks that no query of Stats or of the
// backlog gauges needs to read the whole messages table: with sequential
// scans priced out, the planner must still find an index path for every
// access to it, and the per-topic queries must use migration 2's indexes.
func TestStatsQueriesUseIndexes(t *testing.T) {
	t.Parallel()
	pool, schema := testenv.Schema(t, 4)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	q := sqlident.Quote(schema)
	if _, err := pool.Exec(ctx, `INSERT INTO `+q+`.inbox_messages (source, message_id, topic, stream, seq, state, processed_at)
		SELECT 'src', 'm' || i, 't' || (i % 7),
		       CASE WHEN i % 3 = 0 THEN 's' || (i % 50) END, CASE WHEN i % 3 = 0 THEN i END,
		       CASE WHEN i % 5 = 0 THEN 'pending' WHEN i % 11 = 0 THEN 'dead' ELSE 'done' END,
		       CASE WHEN i % 5 <> 0 AND i % 11 <> 0 THEN now() END
		FROM generate_series(1, 2000) i`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO `+q+`.inbox_streams (source, stream, next_seq)
		SELECT 'src', 's' || i, 1 FROM generate_series(0, 49) i`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ANALYZE `+q+`.inbox_messages`); err != nil {
		t.Fatal(err)
	}
	in, err := New(pool, Config{Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	sql := in.e.sql.stats
	for _, c := range []struct {
		name    string
		sql     string
		args    []any
		mustUse []string
	}{
		{"topics", sql.topics, []any{StatsTopicLimit, StatsCountLimit}, []string{"inbox_messages_topic_pending", "inbox_messages_topic_finished"}},
		{"pending", sql.pending, []any{StatsTopicLimit, StatsCountLimit}, []string{"inbox_messages_topic_pending"}},
		{"running", sql.running, []any{StatsRunningScan}, nil},
		{"streams", sql.streams, []any{StatsCountLimit, StatsRunningScan}, nil},
		{"stream gauges", sql.streamGauges, nil, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			tx, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer rollback(tx)
			if _, err := tx.Exec(ctx, "SET LOCAL enable_seqscan = off"); err != nil {
				t.Fatal(err)
			}
			rows, err := tx.Query(ctx, "EXPLAIN "+c.sql, c.args...)
			if err != nil {
				t.Fatal(err)
			}
			var plan []string
			for rows.Next() {
				var line string
				if err := rows.Scan(&line); err != nil {
					t.Fatal(err)
				}
				plan = append(plan, line)
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			text := strings.Join(plan, "\n")
			if strings.Contains(text, "Seq Scan on inbox_messages") {
				t.Errorf("plan reads the whole messages table:\n%s", text)
			}
			for _, idx := range c.mustUse {
				if !strings.Contains(text, idx) {
					t.Errorf("plan does not use %s:\n%s", idx, text)
				}
			}
		})
	}
}
