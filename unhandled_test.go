package inbox_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/inboxkit/inbox"
)

// TestUnhandledTopicIsReported: a message whose topic has no handler is
// stored, acked by a receiver and then waits forever. The Inbox says so once
// per topic in its log, and counts it in Stats and in a gauge.
func TestUnhandledTopicIsReported(t *testing.T) {
	tb := setupTelemetry(t)
	var logs syncBuffer
	in := tb.newInbox(inbox.Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	in.Handle("known", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error { return nil })
	for _, batch := range [][]inbox.Message{
		{{ID: "o-1", Topic: "orphan"}, {ID: "o-2", Topic: "orphan"}, {ID: "k-1", Topic: "known"}},
		{{ID: "o-3", Topic: "orphan"}, {ID: "o-1", Topic: "orphan"}},
	} {
		if _, err := in.Store(tb.ctx, batch...); err != nil {
			t.Fatal(err)
		}
	}
	// An Inbox without handlers only stores for others: it says nothing.
	var storeLogs syncBuffer
	store := tb.bundle.newInbox(inbox.Config{Logger: slog.New(slog.NewTextHandler(&storeLogs, nil))})
	if _, err := store.Store(tb.ctx, inbox.Message{ID: "o-4", Topic: "orphan"}); err != nil {
		t.Fatal(err)
	}
	tb.start(in)
	tb.waitState("done", 1, 10*time.Second)

	warnings := 0
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "level=WARN") && strings.Contains(line, "topic=orphan") && strings.Contains(line, "StrictTopics") {
			warnings++
		}
	}
	if warnings != 1 {
		t.Errorf("%d warnings about topic orphan, want 1:\n%s", warnings, logs.String())
	}
	if storeLogs.String() != "" {
		t.Errorf("an Inbox without handlers logged:\n%s", storeLogs.String())
	}

	st, err := in.Stats(tb.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.UnhandledPending != 4 {
		t.Errorf("UnhandledPending %d, want 4", st.UnhandledPending)
	}
	for _, topic := range st.Topics {
		if topic.Handled != (topic.Topic == "known") {
			t.Errorf("topic %s: Handled %v", topic.Topic, topic.Handled)
		}
	}
	gauge := byAttr(tb.collect(), inbox.MetricUnhandledBacklog, inbox.AttrTopic, "")
	if len(gauge) != 1 || gauge["orphan"] != 4 {
		t.Errorf("%s: %v; want orphan 4 and no other topic", inbox.MetricUnhandledBacklog, gauge)
	}
}
