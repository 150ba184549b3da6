package main

import (
	"bufio"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/internal/testenv"
)

// TestUIServesDashboard runs `inboxctl ui` as an operator would, reads the
// address it prints, loads the dead messages page, and stops it with an
// interrupt.
func TestUIServesDashboard(t *testing.T) {
	e := newEnv(t)
	in := e.inbox(inbox.Config{})
	if _, err := in.Store(e.ctx, inbox.Message{ID: "m1", Topic: "orders"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.pool.Exec(e.ctx, `UPDATE "`+e.schema+`".inbox_messages SET state = 'dead', last_error = 'order 17 not found'`); err != nil {
		t.Fatal(err)
	}
	// A password in the URL must not reach the pages or the output.
	url := strings.Replace(testenv.PostgresURL(), "postgres@", "postgres:s3cret-pw@", 1)
	cmd := exec.Command(binary, "ui", "--listen", "127.0.0.1:0", "--read-only")
	cmd.Env = append(os.Environ(), "INBOX_POSTGRES_URL="+url, "INBOX_SCHEMA="+e.schema)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	lines := bufio.NewScanner(stderr)
	var addr string
	for addr == "" && lines.Scan() {
		if m := regexp.MustCompile(`on (http://[0-9.:]+)/`).FindStringSubmatch(lines.Text()); m != nil {
			addr = m[1]
		}
	}
	if addr == "" {
		_ = cmd.Process.Kill()
		t.Fatalf("inboxctl ui printed no address (%v)", cmd.Wait())
	}
	rest := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(stderr)
		rest <- string(b)
		exited <- cmd.Wait()
	}()

	resp, err := http.Get(addr + "/dead")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), "order # not found") {
		t.Fatalf("GET /dead: status %d\n%s", resp.StatusCode, page)
	}
	if strings.Contains(string(page), "s3cret-pw") || !strings.Contains(string(page), "read-only") {
		t.Fatal("the page shows the password, or is not read-only")
	}

	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("inboxctl ui exited with %v\n%s", err, <-rest)
		}
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("inboxctl ui did not stop on interrupt")
	}
	if out := <-rest; strings.Contains(out, "s3cret-pw") {
		t.Fatalf("the output shows the password:\n%s", out)
	}
}
