package dashboard_test

import (
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/dashboard"
)

// parkStream stores seq 1..3 of a stream and parks it on seq 1, dead, as a
// worker would; it returns the dead message's row ID.
func (f *fixture) parkStream(stream string) int64 {
	f.t.Helper()
	for seq := int64(1); seq <= 3; seq++ {
		m := inbox.Message{ID: fmt.Sprintf("%s-%d", stream, seq), Topic: "ledger", Stream: stream, Seq: seq}
		if _, err := f.in.Store(f.ctx, m); err != nil {
			f.t.Fatal(err)
		}
	}
	id := f.kill(stream+"-1", "permanent: account <b>closed</b>")
	_, err := f.pool.Exec(f.ctx, `UPDATE `+f.q+`.inbox_streams SET parked_at = now(),
		parked_reason = 'message dead: account <b>closed</b>', parked_message_id = $2 WHERE stream = $1`, stream, id)
	if err != nil {
		f.t.Fatal(err)
	}
	return id
}

func TestEscapesMessageData(t *testing.T) {
	f := setup(t, dashboard.Options{})
	const evil = `<script>alert("x")</script>`
	id := f.dead(inbox.Message{
		ID:      "m-" + evil,
		Topic:   "t" + evil,
		Headers: map[string]string{"x" + evil: "v" + evil},
		Body:    []byte("body " + evil),
	}, "failed 42 times: "+evil)
	stream := "s" + evil
	f.parkStream(stream)

	pages := []string{"/ops/", "/ops/dead", fmt.Sprintf("/ops/messages/%d", id), "/ops/streams",
		"/ops/stream?" + url.Values{"source": {inbox.DefaultSource}, "stream": {stream}}.Encode()}
	for _, p := range pages {
		status, page := f.get(p)
		if status != http.StatusOK {
			t.Fatalf("GET %s: status %d\n%s", p, status, page)
		}
		mustNotContain(t, page, "<script>alert", "<b>closed")
		if !strings.Contains(page, "&lt;script&gt;alert(") {
			t.Errorf("GET %s: the escaped script is not shown", p)
		}
		// The pages never show where the database is.
		mustNotContain(t, page, "postgres://", "127.0.0.1:5432")
	}
	_, page := f.get(fmt.Sprintf("/ops/messages/%d", id))
	mustContain(t, page, `body &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;`, `x&lt;script&gt;`)
}

func TestBodyPreviewIsBounded(t *testing.T) {
	f := setup(t, dashboard.Options{})
	body := strings.Repeat("a", dashboard.BodyPreviewBytes) + "TAIL"
	id := f.dead(inbox.Message{ID: "big", Topic: "orders", Body: []byte(body)}, "boom")
	_, page := f.get(fmt.Sprintf("/ops/messages/%d", id))
	mustContain(t, page, "4,100 bytes; the first 4,096 shown", strings.Repeat("a", 100))
	mustNotContain(t, page, "TAIL")
}

func TestActionsNeedCSRFToken(t *testing.T) {
	f := setup(t, dashboard.Options{})
	id := f.dead(msg("a"), "boom")
	form := url.Values{"id": {fmt.Sprint(id)}, "confirm": {"yes"}}

	// No cookie and no token: a cross-site form.
	if status, _ := f.post("/ops/dead/retry", form); status != http.StatusForbidden {
		t.Fatalf("without a token: status %d, want 403", status)
	}
	_, page := f.get("/ops/dead") // sets the cookie
	token := f.token(page)
	form.Set("csrf", strings.Repeat("0", len(token)))
	if status, _ := f.post("/ops/dead/retry", form); status != http.StatusForbidden {
		t.Fatalf("with a wrong token: status %d, want 403", status)
	}
	// Another browser's valid token does not match this browser's cookie.
	other := setupClient(f)
	_, otherPage := f.getWith(other, "/ops/dead")
	form.Set("csrf", f.token(otherPage))
	if status, _ := f.post("/ops/dead/retry", form); status != http.StatusForbidden {
		t.Fatalf("with another browser's token: status %d, want 403", status)
	}
	if s := f.state(id); s != "dead" {
		t.Fatalf("message is %s after refused posts, want dead", s)
	}

	form.Set("csrf", token)
	status, _ := f.post("/ops/dead/retry", form)
	if status != http.StatusSeeOther {
		t.Fatalf("with the token: status %d, want 303", status)
	}
	if s := f.state(id); s != "pending" {
		t.Fatalf("message is %s after retry, want pending", s)
	}
}

func TestActionsNeedConfirmation(t *testing.T) {
	f := setup(t, dashboard.Options{})
	id := f.dead(msg("a"), "boom 1")
	_, page := f.get("/ops/dead")
	form := url.Values{"id": {fmt.Sprint(id)}, "csrf": {f.token(page)}}
	status, page := f.post("/ops/dead/delete", form)
	if status != http.StatusOK {
		t.Fatalf("first post: status %d, want the confirmation page", status)
	}
	mustContain(t, page, "Confirm: delete", `name="confirm" value="yes"`, "gone for good")
	if s := f.state(id); s != "dead" {
		t.Fatalf("message is %s before confirmation, want dead", s)
	}
	form.Set("confirm", "yes")
	if status, _ := f.post("/ops/dead/delete", form); status != http.StatusSeeOther {
		t.Fatalf("confirmed post: status %d, want 303", status)
	}
	if _, err := f.in.GetMessage(f.ctx, id); err == nil {
		t.Fatal("message still exists after a confirmed delete")
	}
}

func TestReadOnlyHidesAndRefusesActions(t *testing.T) {
	f := setup(t, dashboard.Options{ReadOnly: true})
	id := f.dead(msg("a"), "boom")
	f.parkStream("s1")
	for _, p := range []string{"/ops/", "/ops/dead", fmt.Sprintf("/ops/messages/%d", id), "/ops/streams", "/ops/stream?stream=s1"} {
		_, page := f.get(p)
		mustNotContain(t, page, `method="post"`, "Retry</button>", "Retry group", "Delete</button>", "Skip</button>")
		mustContain(t, page, "read-only")
	}
	for _, path := range []string{"/ops/dead/retry", "/ops/dead/delete"} {
		status, _ := f.post(path, url.Values{"id": {fmt.Sprint(id)}, "confirm": {"yes"}})
		if status != http.StatusForbidden {
			t.Errorf("POST %s: status %d, want 403", path, status)
		}
	}
	for _, path := range []string{"/ops/stream/retry", "/ops/stream/skip"} {
		status, _ := f.post(path, url.Values{"stream": {"s1"}, "confirm": {"yes"}})
		if status != http.StatusForbidden {
			t.Errorf("POST %s: status %d, want 403", path, status)
		}
	}
	if s := f.state(id); s != "dead" {
		t.Fatalf("message is %s, want dead", s)
	}
	d, err := f.in.StreamDetail(f.ctx, "", "s1")
	if err != nil || d.ParkedAt == nil {
		t.Fatalf("stream after refused actions: %+v, %v; want still parked", d, err)
	}
}

var rowLink = regexp.MustCompile(`href="/ops/messages/(\d+)"`)
var olderLink = regexp.MustCompile(`href="(/ops/dead\?[^"]*before=\d+[^"]*)" rel="next"`)

func TestDeadListPagesByKey(t *testing.T) {
	f := setup(t, dashboard.Options{})
	const n = 120
	want := map[string]bool{}
	for i := range n {
		id := f.dead(msg(fmt.Sprintf("m%03d", i)), fmt.Sprintf("order %d not found", i))
		want[fmt.Sprint(id)] = true
	}
	seen := map[string]bool{}
	path := "/ops/dead?topic=orders"
	pages := 0
	for path != "" {
		pages++
		status, page := f.get(path)
		if status != http.StatusOK {
			t.Fatalf("GET %s: %d", path, status)
		}
		for _, m := range rowLink.FindAllStringSubmatch(page, -1) {
			if seen[m[1]] {
				t.Fatalf("row %s on two pages", m[1])
			}
			seen[m[1]] = true
		}
		path = ""
		if m := olderLink.FindStringSubmatch(page); m != nil {
			path = strings.ReplaceAll(m[1], "&amp;", "&")
			if !strings.Contains(path, "topic=orders") {
				t.Fatalf("the next page's link drops the filter: %s", path)
			}
		}
		if pages == 1 {
			// All 120 share one failure pattern.
			mustContain(t, f.mustGet("/ops/dead"), "order # not found", ">120<")
		}
	}
	if pages != 3 || len(seen) != n {
		t.Fatalf("%d pages listed %d rows, want 3 pages of all %d", pages, len(seen), n)
	}
	for id := range want {
		if !seen[id] {
			t.Fatalf("row %s never listed", id)
		}
	}
}

func TestRetryGroupAndSkipStream(t *testing.T) {
	f := setup(t, dashboard.Options{})
	var group []int64
	for i := range 3 {
		group = append(group, f.dead(msg(fmt.Sprintf("g%d", i)), fmt.Sprintf("order %d not found", 1000+i)))
	}
	other := f.dead(msg("o"), "timeout")
	_, page := f.get("/ops/dead")
	fp := regexp.MustCompile(`name="fp" value="([0-9a-f]+)"><button type="submit" class="retry-group"`).FindStringSubmatch(page)
	if fp == nil {
		t.Fatalf("no retry-group form:\n%s", page)
	}
	// The first group listed is the largest: the three "order # not found".
	form := url.Values{"fp": {fp[1]}, "csrf": {f.token(page)}}
	_, confirm := f.post("/ops/dead/retry", form)
	mustContain(t, confirm, "Retry 3 dead message(s)", "order # not found")
	form.Set("confirm", "yes")
	if status, _ := f.post("/ops/dead/retry", form); status != http.StatusSeeOther {
		t.Fatalf("retry group: status %d", status)
	}
	for _, id := range group {
		if s := f.state(id); s != "pending" {
			t.Errorf("group message %d is %s, want pending", id, s)
		}
	}
	if s := f.state(other); s != "dead" {
		t.Errorf("message of another group is %s, want dead", s)
	}

	f.parkStream("acct-7")
	_, page = f.get("/ops/streams")
	mustContain(t, page, "acct-7", "parked: <code>message dead: account &lt;b&gt;closed&lt;/b&gt;</code>")
	form = url.Values{"source": {inbox.DefaultSource}, "stream": {"acct-7"}, "csrf": {f.token(page)}}
	_, confirm = f.post("/ops/stream/skip", form)
	mustContain(t, confirm, "Confirm: skip", "Watermark:")
	form.Set("confirm", "yes")
	status, _ := f.post("/ops/stream/skip", form)
	if status != http.StatusSeeOther {
		t.Fatalf("skip: status %d", status)
	}
	d, err := f.in.StreamDetail(f.ctx, "", "acct-7")
	if err != nil {
		t.Fatal(err)
	}
	if d.ParkedAt != nil || d.NextSeq != 2 || d.Skipped != 1 {
		t.Fatalf("after skip: parked %v, watermark %d, skipped %d; want unparked at 2 with 1 skipped", d.ParkedAt, d.NextSeq, d.Skipped)
	}
	if !strings.HasPrefix(f.location, "/ops/stream?") {
		t.Fatalf("skip redirects to %q, want the stream's page", f.location)
	}
	_, page = f.get(f.location)
	mustContain(t, page, "The stream was moved past what blocked it.", "skipped sequence 1")
}
