package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/internal/sqlident"
	"github.com/inboxkit/inbox/internal/testenv"
)

// binary is the inboxctl built for these tests: they run it as an operator
// would, against the real database.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "inboxctl-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "inboxctl")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build inboxctl:", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

// ctl runs the binary on schema with args. extraEnv entries override.
func ctl(t *testing.T, schema string, args ...string) result {
	t.Helper()
	return ctlEnv(t, []string{"INBOX_POSTGRES_URL=" + testenv.PostgresURL(), "INBOX_SCHEMA=" + schema}, args...)
}

func ctlEnv(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
	default:
		t.Fatalf("run inboxctl %v: %v", args, err)
	}
	return r
}

func (r result) want(t *testing.T, code int, contains ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit status %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
	for _, s := range contains {
		if !strings.Contains(r.stdout+r.stderr, s) {
			t.Fatalf("output lacks %q\nstdout:\n%s\nstderr:\n%s", s, r.stdout, r.stderr)
		}
	}
}

func (r result) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(r.stdout), v); err != nil {
		t.Fatalf("stdout is not the expected JSON: %v\n%s", err, r.stdout)
	}
}

// env is a migrated schema with an Inbox on it.
type env struct {
	t      *testing.T
	ctx    context.Context
	pool   *pgxpool.Pool
	schema string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	t.Parallel()
	pool, schema := testenv.Schema(t, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return &env{t: t, ctx: ctx, pool: pool, schema: schema}
}

func (e *env) inbox(cfg inbox.Config) *inbox.Inbox {
	e.t.Helper()
	cfg.Schema = e.schema
	cfg.PollInterval = 20 * time.Millisecond
	cfg.RetryInitial, cfg.RetryMax = 10*time.Millisecond, 20*time.Millisecond
	in, err := inbox.New(e.pool, cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return in
}

func (e *env) start(in *inbox.Inbox) (stop func()) {
	e.t.Helper()
	if err := in.Start(e.ctx); err != nil {
		e.t.Fatal(err)
	}
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = in.Stop(ctx)
		}
	}
	e.t.Cleanup(stop)
	return stop
}

func (e *env) count(where string, args ...any) int {
	e.t.Helper()
	var n int
	if err := e.pool.QueryRow(e.ctx, `SELECT count(*) FROM `+sqlident.Quote(e.schema)+`.inbox_messages WHERE `+where, args...).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

func (e *env) waitFor(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) rowID(messageID string) int64 {
	e.t.Helper()
	var id int64
	if err := e.pool.QueryRow(e.ctx, `SELECT id FROM `+sqlident.Quote(e.schema)+`.inbox_messages WHERE message_id = $1`, messageID).Scan(&id); err != nil {
		e.t.Fatal(err)
	}
	return id
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		args []string
		says string
	}{
		{nil, "no command given"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"migrate"}, "migrate needs up, down or status"},
		{[]string{"migrate", "sideways"}, `unknown subcommand "sideways"`},
		{[]string{"dead"}, "dead needs list, show, retry or delete"},
		{[]string{"dead", "show"}, "exactly one message ID"},
		{[]string{"dead", "show", "abc"}, `"abc" is not a message ID`},
		{[]string{"dead", "retry"}, "needs message IDs, a filter"},
		{[]string{"dead", "delete", "--all", "--topic", "x"}, "--all selects every dead message"},
		{[]string{"dead", "retry", "12", "--topic", "x"}, "not both"},
		{[]string{"dead", "list", "--since", "last tuesday"}, `"last tuesday" is not a time`},
		{[]string{"dead", "list", "--since", "1h", "--until", "2h"}, "is not before"},
		{[]string{"dead", "list", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"streams", "retry", "only-source"}, "needs SOURCE and STREAM"},
		{[]string{"stats", "--schema", "bad-name"}, "--schema"},
		{[]string{"stats", "extra"}, `unexpected argument "extra"`},
	} {
		r := ctlEnv(t, []string{"INBOX_POSTGRES_URL=postgres://nobody@127.0.0.1:1/x"}, c.args...)
		if r.code != 2 || !strings.Contains(r.stderr, c.says) {
			t.Errorf("inboxctl %v: exit %d, stderr %q; want 2 and %q", c.args, r.code, r.stderr, c.says)
		}
	}
	r := ctlEnv(t, nil, "help")
	r.want(t, 0, "dead retry", "streams skip", "INBOX_POSTGRES_URL")
}

func TestUnreachableDatabaseRedactsPassword(t *testing.T) {
	t.Parallel()
	const password = "hunter2-secret"
	r := ctlEnv(t, []string{"INBOX_POSTGRES_URL=postgres://app:" + password + "@127.0.0.1:1/db?sslmode=disable"}, "stats")
	r.want(t, 1, "cannot reach the database at postgres://app:xxxxx@127.0.0.1:1/db")
	// A server that accepts the connection and never answers: the connect
	// timeout ends the wait.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	r2 := ctlEnv(t, nil, "--url", "host=127.0.0.1 port="+strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)+" user=app password="+password+" sslmode=disable",
		"--connect-timeout", "300ms", "dead", "list")
	r2.want(t, 1, "cannot reach the database at host=127.0.0.1", "password=xxxxx")
	r3 := ctlEnv(t, nil, "--url", "postgres://app:"+password+"@host:notaport/db", "stats")
	r3.want(t, 2, "postgres://app:xxxxx@host:notaport/db")
	for _, r := range []result{r, r2, r3} {
		if strings.Contains(r.stdout+r.stderr, password) {
			t.Errorf("output shows the password:\n%s%s", r.stdout, r.stderr)
		}
	}
}

func TestMigrate(t *testing.T) {
	t.Parallel()
	pool := testenv.Pool(t, "inboxctl_migrate", 2)
	schema := testenv.UniqueName("ctl")
	t.Cleanup(func() {
		_, _ = pool.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+sqlident.Quote(schema)+` CASCADE`)
	})
	schemaExists := func() bool {
		var ok bool
		if err := pool.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, schema).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		return ok
	}

	ctl(t, schema, "migrate", "status").want(t, 0, "create_inbox", "no")
	if schemaExists() {
		t.Fatal("migrate status created the schema")
	}
	ctl(t, schema, "stats").want(t, 1, "has no inbox tables", "migrate up")
	ctl(t, schema, "migrate", "up").want(t, 0, "applied migration 1", "applied migration 2")
	ctl(t, schema, "migrate", "up").want(t, 0, "up to date")
	var status []struct {
		Version int    `json:"version"`
		Applied bool   `json:"applied"`
		At      string `json:"applied_at"`
	}
	ctl(t, schema, "migrate", "status", "--json").json(t, &status)
	if len(status) < 2 || !status[0].Applied || !status[1].Applied || status[1].At == "" {
		t.Fatalf("status after up = %+v", status)
	}
	ctl(t, schema, "migrate", "down", "--to", "1").want(t, 0, "reverted migration 2", "version 1")
	ctl(t, schema, "migrate", "down").want(t, 2, "drops the inbox tables", "--yes")
	ctl(t, schema, "migrate", "down", "--to", "5").want(t, 2, "not below the current version")
	ctl(t, schema, "migrate", "down", "--yes").want(t, 0, "reverted migration 1")
	ctl(t, schema, "migrate", "down", "--yes").want(t, 1, "no migration applied")
}

func TestDeadMessages(t *testing.T) {
	e := newEnv(t)
	in := e.inbox(inbox.Config{MaxAttempts: 1})
	var fixed atomic.Bool
	in.Handle("pay", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		if fixed.Load() {
			return nil
		}
		return inbox.Permanent(fmt.Errorf("customer %s unknown", m.ID))
	})
	in.Handle("ship", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		return errors.New("warehouse down\nsecond line of the error")
	})
	var msgs []inbox.Message
	for i := 1; i <= 3; i++ {
		msgs = append(msgs, inbox.Message{ID: fmt.Sprintf("pay-%d", i), Topic: "pay", Body: []byte(`{"secret":"body"}`),
			Headers: map[string]string{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "x-tenant": "acme"}})
	}
	msgs = append(msgs, inbox.Message{ID: "ship-1", Topic: "ship"}, inbox.Message{ID: "ship-2", Topic: "ship"})
	if _, err := in.Store(e.ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	stop := e.start(in)
	e.waitFor("5 dead messages", func() bool { return e.count(`state = 'dead'`) == 5 })

	r := ctl(t, e.schema, "dead", "list")
	r.want(t, 0, "pay-1", "customer pay-1 unknown", "ship-2", "warehouse down …")
	if strings.Contains(r.stdout, "second line") || strings.Contains(r.stdout, "secret") {
		t.Fatalf("dead list shows more than the first line of errors, or a body:\n%s", r.stdout)
	}
	var listed []messageJSON
	ctl(t, e.schema, "dead", "list", "--topic", "ship", "--json").json(t, &listed)
	if len(listed) != 2 || listed[0].MessageID != "ship-1" || listed[0].State != "dead" || listed[0].Attempts != 1 ||
		!strings.Contains(listed[0].LastError, "second line") {
		t.Fatalf("dead list --topic ship --json = %+v", listed)
	}
	page := ctl(t, e.schema, "dead", "list", "--error", "CUSTOMER", "--limit", "2")
	page.want(t, 0, "pay-1", "pay-2", "--after")
	if strings.Contains(page.stdout, "pay-3") {
		t.Fatalf("--limit 2 listed a third message:\n%s", page.stdout)
	}
	ctl(t, e.schema, "dead", "list", "--error", "customer", "--after", strconv.FormatInt(e.rowID("pay-2"), 10)).want(t, 0, "pay-3")
	ctl(t, e.schema, "dead", "list", "--since", "1h", "--until", "2099-01-01").want(t, 0, "pay-1", "ship-1")
	ctl(t, e.schema, "dead", "list", "--until", "2000-01-01").want(t, 0, "no dead messages match")

	// Why is pay-1 dead? Its headers, error and attempts, never its body.
	pay1 := strconv.FormatInt(e.rowID("pay-1"), 10)
	show := ctl(t, e.schema, "dead", "show", pay1)
	show.want(t, 0, "state:        dead", "attempts:     1", "x-tenant: acme", "traceparent: 00-0af7", "permanent: customer pay-1 unknown",
		"body:         17 bytes", "dead retry "+pay1)
	if strings.Contains(show.stdout, "secret") {
		t.Fatalf("dead show printed the body:\n%s", show.stdout)
	}
	var shown messageJSON
	ctl(t, e.schema, "dead", "show", pay1, "--json").json(t, &shown)
	if shown.Headers["x-tenant"] != "acme" || shown.Attempts != 1 || shown.Topic != "pay" {
		t.Fatalf("dead show --json = %+v", shown)
	}
	ctl(t, e.schema, "dead", "show", "987654").want(t, 1, "message 987654 not found")

	// The cause is fixed: replay one by ID, then the rest of the topic in
	// batches of one, which reports progress.
	fixed.Store(true)
	ctl(t, e.schema, "dead", "retry", pay1).want(t, 0, "retried 1 dead messages")
	e.waitFor("pay-1 to be done", func() bool { return e.count(`message_id = 'pay-1' AND state = 'done'`) == 1 })
	ctl(t, e.schema, "dead", "retry", pay1).want(t, 1, "not dead, or do not exist")
	bulk := ctl(t, e.schema, "dead", "retry", "--topic", "pay", "--batch", "1")
	bulk.want(t, 0, "retried 2 dead messages", "batch 1: retried 1", "batch 2: retried 1 (2 so far")
	e.waitFor("every pay message to be done", func() bool { return e.count(`topic = 'pay' AND state = 'done'`) == 3 })

	// Bulk delete needs --yes; without it nothing is deleted.
	stop()
	ctl(t, e.schema, "dead", "delete", "--topic", "ship").want(t, 2, "would delete 2 dead messages", "--yes")
	if n := e.count(`topic = 'ship'`); n != 2 {
		t.Fatalf("%d ship messages left after a refused delete, want 2", n)
	}
	var deleted map[string]int
	ctl(t, e.schema, "dead", "delete", "--topic", "ship", "--yes", "--json").json(t, &deleted)
	if deleted["deleted"] != 2 || e.count(`topic = 'ship'`) != 0 {
		t.Fatalf("delete --yes = %v, %d ship messages left", deleted, e.count(`topic = 'ship'`))
	}
	ctl(t, e.schema, "dead", "retry", "--all").want(t, 0, "retried 0 dead messages")
}

func TestStreams(t *testing.T) {
	e := newEnv(t)
	in := e.inbox(inbox.Config{MaxAttempts: 1, GapTimeout: time.Hour})
	var fixed atomic.Bool
	in.Handle("order", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		if m.Stream == "o1" && m.Seq == 1 && !fixed.Load() {
			return inbox.Permanent(errors.New("order o1 is not known"))
		}
		return nil
	})
	if _, err := in.Store(e.ctx,
		inbox.Message{ID: "o1-1", Topic: "order", Stream: "o1", Seq: 1},
		inbox.Message{ID: "o1-2", Topic: "order", Stream: "o1", Seq: 2},
		inbox.Message{ID: "o2-1", Topic: "order", Stream: "o2", Seq: 1},
		inbox.Message{ID: "o2-3", Topic: "order", Stream: "o2", Seq: 3}); err != nil {
		t.Fatal(err)
	}
	e.start(in)
	e.waitFor("o1 parked and o2 on a gap", func() bool {
		var parked, gap int
		err := e.pool.QueryRow(e.ctx, `SELECT count(*) FILTER (WHERE parked_at IS NOT NULL), count(*) FILTER (WHERE gap_since IS NOT NULL)
			FROM `+sqlident.Quote(e.schema)+`.inbox_streams`).Scan(&parked, &gap)
		if err != nil {
			t.Fatal(err)
		}
		return parked == 1 && gap == 1
	})

	ctl(t, e.schema, "streams", "list").want(t, 0, "o1", "parked", "is dead", "o2", "gap", "waiting for seq 2..2")
	var parked []streamJSON
	ctl(t, e.schema, "streams", "list", "--parked", "--json").json(t, &parked)
	if len(parked) != 1 || parked[0].Stream != "o1" || parked[0].State != "parked" || parked[0].ParkedMessageID != e.rowID("o1-1") ||
		!strings.Contains(parked[0].ParkedReason, "is dead") || parked[0].Pending != 1 || parked[0].NextSeq != 1 {
		t.Fatalf("streams list --parked --json = %+v", parked)
	}
	gapOut := ctl(t, e.schema, "streams", "list", "--gap")
	gapOut.want(t, 0, "o2")
	if strings.Contains(gapOut.stdout, "o1") {
		t.Fatalf("--gap lists the parked stream:\n%s", gapOut.stdout)
	}

	// The stats show the same.
	var st statsJSON
	ctl(t, e.schema, "stats", "--json").json(t, &st)
	if st.Streams.Total != 2 || st.Streams.Parked != 1 || st.Streams.Gap != 1 || st.Total.Dead != 1 || st.Total.Done != 1 ||
		st.Total.Pending != 2 || len(st.Topics) != 1 || st.Topics[0].Topic != "order" || st.Streams.MaxLagSecs <= 0 {
		t.Fatalf("stats --json = %+v", st)
	}
	ctl(t, e.schema, "stats").want(t, 0, "order", "TOTAL", "1 parked, 1 waiting on a gap")

	// Unblock both: retry the parked one once its cause is fixed, skip the
	// missing sequence number of the other.
	fixed.Store(true)
	ctl(t, e.schema, "streams", "retry", inbox.DefaultSource, "o1").want(t, 0, "stream default/o1 resumed at sequence 1")
	ctl(t, e.schema, "streams", "skip", inbox.DefaultSource, "o2").want(t, 0, "skipped missing sequence 2..2", "resumes at sequence 3")
	e.waitFor("every message to be done", func() bool { return e.count(`state = 'done'`) == 4 })
	ctl(t, e.schema, "streams", "list").want(t, 0, "no streams match")
	ctl(t, e.schema, "streams", "list", "--all").want(t, 0, "o1", "idle", "last skip")
	ctl(t, e.schema, "streams", "skip", inbox.DefaultSource, "nosuch").want(t, 1, `stream "nosuch" of source "default" not found`)
}

func TestStatsOutput(t *testing.T) {
	e := newEnv(t)
	in := e.inbox(inbox.Config{})
	in.Handle("a", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error { return nil })
	if _, err := in.Store(e.ctx, inbox.Message{ID: "1", Topic: "a"}, inbox.Message{ID: "2", Topic: "a"},
		inbox.Message{ID: "3", Topic: "unhandled"}); err != nil {
		t.Fatal(err)
	}
	e.start(in)
	e.waitFor("2 done", func() bool { return e.count(`state = 'done'`) == 2 })
	var st statsJSON
	ctl(t, e.schema, "stats", "--json").json(t, &st)
	want := []topicJSON{
		{Topic: "a", Done: 2, ProcessedLastMinute: 2},
		{Topic: "unhandled", Pending: 1, Ready: 1},
	}
	if len(st.Topics) != 2 || st.Schema != e.schema || st.CountLimit != inbox.StatsCountLimit {
		t.Fatalf("stats --json = %+v", st)
	}
	for i, w := range want {
		got := st.Topics[i]
		if got.OldestPendingSecs < 0 || (w.Pending > 0) != (got.OldestPendingSecs > 0) {
			t.Errorf("%s: oldest pending %v s with %d pending", got.Topic, got.OldestPendingSecs, got.Pending)
		}
		got.OldestPendingSecs = 0
		if got != w {
			t.Errorf("topic %d = %+v, want %+v", i, got, w)
		}
	}
	text := ctl(t, e.schema, "stats")
	text.want(t, 0, "TOPIC", "unhandled", "TOTAL", "streams: 0 in all")
	lines := strings.Split(text.stdout, "\n")
	if f := strings.Fields(lines[1]); len(f) < 9 || f[0] != "a" || f[1] != "0" || f[5] != "2" || f[8] != "2" {
		t.Errorf("row of topic a = %q", lines[1])
	}
}
