package dashboard_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/dashboard"
	"github.com/inboxkit/inbox/internal/testenv"
)

// The overview shows the outbox's figures when the dashboard is given one,
// and no outbox section when it is not.
func TestOverviewShowsTheOutbox(t *testing.T) {
	t.Parallel()
	pool, schema := testenv.Schema(t, 8)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	in, err := inbox.New(pool, inbox.Config{Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	ob, err := inbox.NewOutbox(pool, inbox.OutboxConfig{Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"o-1", "o-2", "o-3"} {
		if _, err := ob.Send(ctx, inbox.OutgoingMessage{ID: id, Exchange: "x", RoutingKey: "k", Body: []byte("{}")}); err != nil {
			t.Fatal(err)
		}
	}
	overview := func(opts dashboard.Options) string {
		t.Helper()
		h, err := dashboard.New(in, opts)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(h)
		defer srv.Close()
		res, err := http.Get(srv.URL + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, err := io.ReadAll(res.Body)
		if err != nil || res.StatusCode != http.StatusOK {
			t.Fatalf("GET /: %d, %v", res.StatusCode, err)
		}
		return string(body)
	}
	with := overview(dashboard.Options{Outbox: ob})
	if !strings.Contains(with, "<h2>Outbox</h2>") || !strings.Contains(with, "<strong>3</strong> pending") {
		t.Fatalf("overview with an outbox lacks its figures (3 pending):\n%s", with)
	}
	if without := overview(dashboard.Options{}); strings.Contains(without, "<h2>Outbox</h2>") {
		t.Fatal("overview without an outbox shows an outbox section")
	}
}
