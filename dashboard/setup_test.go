package dashboard_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/dashboard"
	"github.com/inboxkit/inbox/internal/sqlident"
	"github.com/inboxkit/inbox/internal/testenv"
)

// fixture is a stopped inbox on a fresh schema with the dashboard served
// under /ops, and a browser-like client with a cookie jar.
type fixture struct {
	t      *testing.T
	ctx    context.Context
	pool   *pgxpool.Pool
	q      string // quoted schema
	in     *inbox.Inbox
	srv    *httptest.Server
	client *http.Client
	// location is the Location header of the last POST's answer.
	location string
}

func setup(t *testing.T, opts dashboard.Options) *fixture {
	t.Helper()
	t.Parallel()
	pool, schema := testenv.Schema(t, 8)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	in, err := inbox.New(pool, inbox.Config{Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	opts.Prefix = "/ops"
	h, err := dashboard.New(in, opts)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ops/", h)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return &fixture{t: t, ctx: ctx, pool: pool, q: sqlident.Quote(schema), in: in, srv: srv, client: client}
}

// dead stores msg and makes it dead with lastError, returning its row ID.
func (f *fixture) dead(msg inbox.Message, lastError string) int64 {
	f.t.Helper()
	if _, err := f.in.Store(f.ctx, msg); err != nil {
		f.t.Fatal(err)
	}
	return f.kill(msg.ID, lastError)
}

// kill makes the stored message of that ID dead with lastError.
func (f *fixture) kill(messageID, lastError string) int64 {
	f.t.Helper()
	var id int64
	err := f.pool.QueryRow(f.ctx, `UPDATE `+f.q+`.inbox_messages SET state = 'dead', attempts = 3, last_error = $2
		WHERE message_id = $1 RETURNING id`, messageID, lastError).Scan(&id)
	if err != nil {
		f.t.Fatal(err)
	}
	return id
}

func (f *fixture) state(id int64) string {
	f.t.Helper()
	var s string
	if err := f.pool.QueryRow(f.ctx, `SELECT state FROM `+f.q+`.inbox_messages WHERE id = $1`, id).Scan(&s); err != nil {
		f.t.Fatal(err)
	}
	return s
}

// get fetches a path below the server and returns status and body.
func (f *fixture) get(path string) (int, string) {
	f.t.Helper()
	resp, err := f.client.Get(f.srv.URL + path)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		f.t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func (f *fixture) post(path string, form url.Values) (int, string) {
	f.t.Helper()
	resp, err := f.client.PostForm(f.srv.URL+path, form)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	f.location = resp.Header.Get("Location")
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		f.t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

var csrfInput = regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`)

// token reads the CSRF token from a page's forms.
func (f *fixture) token(page string) string {
	f.t.Helper()
	m := csrfInput.FindStringSubmatch(page)
	if m == nil {
		f.t.Fatalf("no CSRF token in the page:\n%s", page)
	}
	return m[1]
}

func mustContain(t *testing.T, page string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(page, w) {
			t.Errorf("page lacks %q", w)
		}
	}
}

func mustNotContain(t *testing.T, page string, bad ...string) {
	t.Helper()
	for _, b := range bad {
		if strings.Contains(page, b) {
			t.Errorf("page contains %q", b)
		}
	}
}

func msg(id string) inbox.Message {
	return inbox.Message{ID: id, Topic: "orders", Body: []byte(fmt.Sprintf(`{"id": %q}`, id))}
}

func (f *fixture) mustGet(path string) string {
	f.t.Helper()
	status, page := f.get(path)
	if status != http.StatusOK {
		f.t.Fatalf("GET %s: status %d", path, status)
	}
	return page
}

// setupClient is a second browser, with its own cookies.
func setupClient(f *fixture) *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (f *fixture) getWith(c *http.Client, path string) (int, string) {
	saved := f.client
	f.client = c
	defer func() { f.client = saved }()
	return f.get(path)
}
