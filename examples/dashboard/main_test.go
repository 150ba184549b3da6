package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/inboxkit/inbox/internal/devenv"
)

// TestDashboardBehindBasicAuth runs the service on a schema of its own: its
// own route works, the dashboard refuses a request without the password
// and shows the dead order with it.
func TestDashboardBehindBasicAuth(t *testing.T) {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	s := settings{
		postgresURL: devenv.PostgresURL(),
		schema:      "dashboard_test_" + hex.EncodeToString(b),
		user:        "operator",
		password:    "test-password",
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := pgxpool.New(ctx, s.postgresURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	defer func() {
		_, _ = pool.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+pgx.Identifier{s.schema}.Sanitize()+` CASCADE`)
	}()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- run(runCtx, s, ln) }()

	var resp *http.Response
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err = http.Post(base+"/orders?id=o-1&total=-3", "", nil)
		if err == nil && resp.StatusCode == http.StatusOK {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the service's own route does not answer: %v", err)
		}
	}
	resp, err = http.Get(base + "/ops/inbox/dead")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("without credentials: status %d, want 401", resp.StatusCode)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		req, _ := http.NewRequest("GET", base+"/ops/inbox/dead", nil)
		req.SetBasicAuth(s.user, s.password)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK && strings.Contains(string(page), "order o-#: total &#34;-#&#34; is not a positive number") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the dead order is not on the dashboard (status %d):\n%s", resp.StatusCode, page)
		}
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("service stopped with %v", err)
	}
}
