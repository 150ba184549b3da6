package browsertest

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/dashboard"
	"github.com/inboxkit/inbox/internal/sqlident"
	"github.com/inboxkit/inbox/internal/testenv"
)

var screenshots = flag.String("screenshots", "", "save the screenshots in this `directory` (default: the test's temporary directory)")

// chromium finds the browser, or skips the test when there is none and
// CI is unset: in CI a missing browser is a failure.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if path, err := exec.LookPath(name); err == nil {
			return path
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("no chromium binary found, and CI is set: install Debian's chromium package (.ci/run does)")
	}
	t.Skip("no chromium binary found (apt-get install chromium); skipping the browser test")
	return ""
}

// world is an inbox with a running worker pool, in a state worth looking
// at: orders that died of one failure, a ledger stream parked on a dead
// message, a stream waiting on a gap, and some processed work.
type world struct {
	t    *testing.T
	ctx  context.Context
	in   *inbox.Inbox
	q    string
	pool interface {
		QueryRow(context.Context, string, ...any) pgx.Row
	}
	broken atomic.Bool
}

func newWorld(t *testing.T) *world {
	pool, schema := testenv.Schema(t, 12)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	in, err := inbox.New(pool, inbox.Config{Schema: schema, Workers: 2, PollInterval: 50 * time.Millisecond,
		RetryInitial: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, ctx: ctx, in: in, q: sqlident.Quote(schema), pool: pool}
	w.broken.Store(true)
	in.Handle("orders", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		if w.broken.Load() && strings.HasPrefix(m.ID, "order-") {
			return inbox.Permanent(fmt.Errorf("order %s not found in catalogue v%d", strings.TrimPrefix(m.ID, "order-"), 7))
		}
		return nil
	})
	in.Handle("ledger", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		if m.Stream == "acct-42" && m.Seq == 1 {
			return inbox.Permanent(errors.New("account 42 is closed"))
		}
		return nil
	})
	if err := in.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = in.Stop(stopCtx)
	})
	var msgs []inbox.Message
	for i := range 40 {
		msgs = append(msgs, inbox.Message{ID: fmt.Sprintf("ok-%d", i), Topic: "orders", Body: []byte(`{"total": 12.5}`)})
	}
	for i := range 4 {
		msgs = append(msgs, inbox.Message{ID: fmt.Sprintf("order-%d", 1017+i*311), Topic: "orders",
			Headers: map[string]string{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
			Body:    []byte(fmt.Sprintf(`{"order": %d, "note": "<script>alert(1)</script>"}`, 1017+i*311))})
	}
	for seq := int64(1); seq <= 3; seq++ {
		msgs = append(msgs, inbox.Message{ID: fmt.Sprintf("acct-42-%d", seq), Topic: "ledger", Stream: "acct-42", Seq: seq,
			Body: []byte(fmt.Sprintf(`{"entry": %d}`, seq))})
	}
	msgs = append(msgs, inbox.Message{ID: "acct-77-2", Topic: "ledger", Stream: "acct-77", Seq: 2})
	if _, err := in.Store(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	w.waitFor("4 dead orders and a parked stream", func() bool {
		return w.count(`state = 'dead'`) == 5 && len(w.streams("parked")) == 1 && len(w.streams("gap")) == 1
	})
	return w
}

func (w *world) count(where string) int {
	w.t.Helper()
	var n int
	if err := w.pool.QueryRow(w.ctx, `SELECT count(*) FROM `+w.q+`.inbox_messages WHERE `+where).Scan(&n); err != nil {
		w.t.Fatal(err)
	}
	return n
}

func (w *world) streams(state string) []inbox.StreamInfo {
	w.t.Helper()
	list, err := w.in.PageStreams(w.ctx, inbox.StreamQuery{State: state})
	if err != nil {
		w.t.Fatal(err)
	}
	return list
}

func (w *world) waitFor(what string, cond func() bool) {
	w.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			w.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestOperatorResolvesDeadGroupAndParkedStream is what an on-call engineer
// does: look at the overview, find the dead orders grouped by their
// failure, retry the group once the cause is fixed and see it leave the
// list; then find the parked stream, skip its poison message and see the
// stream resume.
func TestOperatorResolvesDeadGroupAndParkedStream(t *testing.T) {
	exe := chromium(t)
	w := newWorld(t)
	ui, err := dashboard.New(w.in, dashboard.Options{Prefix: "/ops/inbox", Refresh: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ops/inbox/", ui)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	base := srv.URL + "/ops/inbox"

	dir := *screenshots
	if dir == "" {
		dir = t.TempDir()
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(w.ctx,
		chromedp.ExecPath(exe),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(allocCtx)
	defer cancel()
	// Start the browser on ctx itself: the first action's context owns
	// it, and the steps below run under shorter ones.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		stepCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		if err := chromedp.Do(stepCtx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	shot := func(name string) {
		t.Helper()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}

	// The overview shows the dead orders and the parked stream.
	do("open the overview", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("figure.chart svg")))
	if s := text("main"); !strings.Contains(s, "acct-42") || !strings.Contains(s, "acct-77") {
		t.Fatalf("the overview lists no parked and gap streams:\n%s", s)
	}
	shot("dashboard-overview.png")

	// The dead orders form one group, whatever their order numbers.
	do("open the dead messages", chromedp.Navigate(base+"/dead"), chromedp.WaitVisible(chromedp.CSS("table.groups")))
	fp, err := chromedp.Run(ctx, chromedp.Evaluate[string](`[...document.querySelectorAll("tr[data-fingerprint]")]
		.find(r => r.textContent.includes("order # not found in catalogue v#")).dataset.fingerprint`))
	if err != nil {
		t.Fatalf("find the group of dead orders: %v", err)
	}
	row := `tr[data-fingerprint="` + fp + `"]`
	if n := text(row + " td.n"); n != "4" {
		t.Fatalf("the group counts %q, want 4", n)
	}
	shot("dashboard-dead.png")

	// One message in detail: the script in its body is text, not code.
	do("open a dead order", chromedp.Navigate(fmt.Sprintf("%s/messages/%d", base, w.rowID("order-1017"))),
		chromedp.WaitVisible(chromedp.CSS("pre.body")))
	if body := text("pre.body"); !strings.Contains(body, "<script>alert(1)</script>") {
		t.Fatalf("the body is not shown as text: %q", body)
	}
	shot("dashboard-message.png")

	// The catalogue is fixed: retry the group, confirm, and it is gone.
	w.broken.Store(false)
	do("retry the group",
		chromedp.Navigate(base+"/dead"), chromedp.WaitVisible(chromedp.CSS(row)),
		chromedp.Click(chromedp.CSS(row+" button.retry-group")),
		chromedp.WaitVisible(chromedp.CSS("#confirm")))
	if s := text("main"); !strings.Contains(s, "Retry 4 dead message(s)") {
		t.Fatalf("the confirmation does not say what it will do:\n%s", s)
	}
	shot("dashboard-confirm.png")
	do("confirm the retry", chromedp.Click(chromedp.CSS("#confirm")),
		chromedp.WaitVisible(chromedp.CSS("p.notice")), chromedp.WaitNotPresent(chromedp.CSS(row)))
	if s := text("p.notice"); s != "Retried 4 dead message(s)." {
		t.Fatalf("notice %q", s)
	}
	w.waitFor("the retried orders to be processed", func() bool { return w.count(`message_id LIKE 'order-%' AND state = 'done'`) == 4 })

	// The parked stream: skip its poison message, confirm, and it resumes.
	stream := `tr[data-stream="acct-42"]`
	do("open the streams", chromedp.Navigate(base+"/streams"), chromedp.WaitVisible(chromedp.CSS("#parked "+stream)))
	shot("dashboard-streams.png")
	do("open the parked stream", chromedp.Click(chromedp.CSS("#parked "+stream+" td a")),
		chromedp.WaitVisible(chromedp.CSS("h1 .state-dead")))
	shot("dashboard-stream.png")
	do("skip the poison message", chromedp.Click(chromedp.CSS("button.skip")), chromedp.WaitVisible(chromedp.CSS("#confirm")),
		chromedp.Click(chromedp.CSS("#confirm")), chromedp.WaitVisible(chromedp.CSS("p.notice")))
	// The page refreshes itself: the stream shows idle once seq 2 and 3
	// have run.
	do("see the stream resume", chromedp.WaitVisible(chromedp.CSS("h1 .state-done")))
	if s := text("dl.props"); !strings.Contains(s, "Watermark\n4") && !strings.Contains(s, "Watermark 4") && !strings.Contains(s, "4 (the next") {
		t.Fatalf("the stream's watermark is not past seq 3:\n%s", s)
	}
	if n := w.count(`message_id IN ('acct-42-2', 'acct-42-3') AND state = 'done'`); n != 2 {
		t.Fatalf("%d of the stream's waiting messages are done, want 2", n)
	}
	shot("dashboard-stream-resumed.png")
}

func (w *world) rowID(messageID string) int64 {
	w.t.Helper()
	var id int64
	if err := w.pool.QueryRow(w.ctx, `SELECT id FROM `+w.q+`.inbox_messages WHERE message_id = $1`, messageID).Scan(&id); err != nil {
		w.t.Fatal(err)
	}
	return id
}
