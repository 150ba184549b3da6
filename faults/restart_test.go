package faults

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/inboxkit/inbox/internal/testenv"
)

// The cases in this file restart the PostgreSQL server and the RabbitMQ
// broker under a running consumer. That disturbs every other user of those
// services, so they run only when FAULTS_RESTARTS is set (make
// test-restarts runs them alone, after every other test), and they are not
// parallel: Go runs them before any parallel case of this package starts.

// Default restart commands: this machine's PostgreSQL cluster, stopped in
// immediate mode (no shutdown checkpoint, crash recovery at start), and its
// RabbitMQ node's application.
const (
	defaultPostgresRestart = "pg_ctlcluster --skip-systemctl-redirect -m immediate $(ls /etc/postgresql) main restart"
	defaultRabbitMQRestart = "rabbitmqctl stop_app && rabbitmqctl start_app"
)

// serviceTimeout bounds how long a restarted service may take to answer
// again.
const serviceTimeout = 90 * time.Second

// restartAt are the numbers of applied messages after which a case
// restarts its service: a point in the run reached by progress, not by a
// clock, with most of the ledger still to handle.
var restartAt = []int{300, 1000}

// TestRestartPostgres restarts PostgreSQL in immediate mode twice under the
// consumer: stores, claims, handlers and the listener fail with it; the
// receiver retries its batch (unacked meanwhile), the workers resume, and
// every confirmed message is applied once, in order.
func TestRestartPostgres(t *testing.T) {
	e, r := setupRestarts(t)
	l := newLedger(ledgerSize, ledgerDups, 12)
	p := e.start("consumer")
	pub := e.publish(l, chunk, pause)
	for _, n := range restartAt {
		e.waitApplied(n)
		r.restartPostgres(e)
		e.fault()
	}
	pub.wait(t)
	if !p.running() {
		t.Fatalf("consumer exited\n%s", p.tail())
	}
	e.check("pg-restart", l, expectation{})
}

// TestRestartRabbitMQ restarts the broker twice under the consumer and the
// publisher: the receiver reconnects and gets its unacked deliveries again;
// the publisher reconnects and publishes again whatever was not confirmed,
// with the same IDs, so that only confirmed messages are expected and the
// inbox drops the copies.
func TestRestartRabbitMQ(t *testing.T) {
	e, r := setupRestarts(t)
	l := newLedger(ledgerSize, ledgerDups, 13)
	p := e.start("consumer")
	pub := e.publishThroughRestarts(l, chunk, pause)
	for _, n := range restartAt {
		e.waitApplied(n)
		r.restartRabbitMQ(e)
		e.fault()
		if !e.connected(p.name, serviceTimeout) {
			t.Fatalf("consumer did not reconnect after the broker restart\n%s", p.tail())
		}
	}
	pub.wait(t)
	if !p.running() {
		t.Fatalf("consumer exited\n%s", p.tail())
	}
	e.check("amqp-restart", l, expectation{})
	t.Logf("publisher: %d messages published again for want of a confirm (first cause: %v)", pub.republished, pub.retryCause)
}

// restarter holds the commands that restart the services the URLs point to.
type restarter struct {
	t                  *testing.T
	postgres, rabbitmq string
}

// setupRestarts skips the case unless FAULTS_RESTARTS is set, sets up its
// environment, and makes sure that both services are up again when it ends,
// passed or failed.
func setupRestarts(t *testing.T) (*env, *restarter) {
	t.Helper()
	if os.Getenv("FAULTS_RESTARTS") == "" {
		t.Skip("restarts PostgreSQL and RabbitMQ; run with FAULTS_RESTARTS=1 (make test-restarts)")
	}
	r := &restarter{
		t:        t,
		postgres: restartCommand(t, "FAULTS_POSTGRES_RESTART", defaultPostgresRestart, testenv.PostgresURL()),
		rabbitmq: restartCommand(t, "FAULTS_RABBITMQ_RESTART", defaultRabbitMQRestart, testenv.AMQPURL()),
	}
	e := setup(t)
	// Registered after setup's cleanups, so it runs before them: they need
	// the services.
	t.Cleanup(r.servicesUp)
	return e, r
}

// restartCommand is the command from the environment variable name, or def,
// which acts on this machine's services: only when rawURL points to this
// machine.
func restartCommand(t *testing.T, name, def, rawURL string) string {
	t.Helper()
	if c := os.Getenv(name); c != "" {
		return c
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatalf("parse the service URL for %s: %v", name, err)
	}
	host := u.Hostname()
	if ip := net.ParseIP(host); host != "" && host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		t.Fatalf("the service URL points to host %s, but the default restart command (%s) acts on this machine: set %s", host, def, name)
	}
	return def
}

// run runs a restart command, set by the environment variable name,
// through the shell.
func (r *restarter) run(name, command string) {
	r.t.Helper()
	out, err := exec.Command("sh", "-c", command).CombinedOutput()
	if err != nil {
		r.t.Fatalf("%s: %v (set %s to the command that restarts this service)\n%s", command, err, name, out)
	}
	r.t.Logf("ran %s", command)
}

// servicesUp starts whichever service does not answer and waits until both
// do (.ci/services-up, the script CI uses before the tests).
func (r *restarter) servicesUp() {
	cmd := exec.Command("../.ci/services-up")
	cmd.Env = append(os.Environ(), "INBOX_POSTGRES_URL="+testenv.PostgresURL())
	out, err := cmd.CombinedOutput()
	if err != nil {
		r.t.Errorf("services not up after the case: %v\n%s", err, out)
	}
}

// restartPostgres restarts the server and waits until it answers again. A
// server that answers with its old start time was not the one restarted.
func (r *restarter) restartPostgres(e *env) {
	r.t.Helper()
	before, err := e.postmasterStart()
	if err != nil {
		r.t.Fatalf("PostgreSQL start time: %v", err)
	}
	r.run("FAULTS_POSTGRES_RESTART", r.postgres)
	// The pool's connections died with the server.
	e.pool.Reset()
	deadline := time.Now().Add(serviceTimeout)
	for {
		after, err := e.postmasterStart()
		if err == nil && !after.Equal(before) {
			return
		}
		if time.Now().After(deadline) {
			if err == nil {
				r.t.Fatalf("%s did not restart the PostgreSQL at INBOX_POSTGRES_URL: it still runs since %s", r.postgres, before)
			}
			r.t.Fatalf("PostgreSQL does not answer %s after the restart: %v", serviceTimeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// postmasterStart is when the server at the case's URL started.
func (e *env) postmasterStart() (time.Time, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var at time.Time
	err := e.pool.QueryRow(ctx, `SELECT pg_postmaster_start_time()`).Scan(&at)
	return at, err
}

// restartRabbitMQ restarts the broker and waits until it accepts
// connections again. A connection opened before must be closed by the
// restart: else the command restarted another broker.
func (r *restarter) restartRabbitMQ(e *env) {
	r.t.Helper()
	witness, err := amqp091.Dial(e.amqpURL)
	if err != nil {
		r.t.Fatalf("dial the broker: %v", err)
	}
	defer witness.Close()
	closed := witness.NotifyClose(make(chan *amqp091.Error, 1))
	r.run("FAULTS_RABBITMQ_RESTART", r.rabbitmq)
	select {
	case <-closed:
	case <-time.After(serviceTimeout):
		r.t.Fatalf("%s did not restart the broker at INBOX_AMQP_URL: a connection to it is still open", r.rabbitmq)
	}
	deadline := time.Now().Add(serviceTimeout)
	for {
		conn, err := amqp091.Dial(e.amqpURL)
		if err == nil {
			conn.Close()
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("the broker does not accept connections %s after the restart: %v", serviceTimeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitApplied waits until the consumer has applied at least n messages.
func (e *env) waitApplied(n int) {
	e.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		applied := e.count(`SELECT count(*) FROM ` + e.q + `.effects`)
		if applied >= n {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("only %d of %d messages applied after 60s", applied, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// publishThroughRestarts is publish for a broker that restarts: when the
// connection or channel fails, or the broker nacks, it reconnects and
// publishes again, with the same IDs, every message of the chunk it has no
// confirm for. Only confirmed IDs are expected.
func (e *env) publishThroughRestarts(l *ledger, chunk int, pause time.Duration) *publishing {
	pub := &publishing{done: make(chan struct{})}
	go func() {
		defer close(pub.done)
		pub.err = e.publishRetrying(pub, l.sends, chunk, pause)
	}()
	return pub
}

func (e *env) publishRetrying(pub *publishing, entries []entry, chunk int, pause time.Duration) error {
	var p confirmedPublisher
	defer p.close()
	deadline := time.Now().Add(3 * time.Minute)
	for start := 0; start < len(entries); start += chunk {
		todo := entries[start:min(start+chunk, len(entries))]
		for retry := false; ; retry = true {
			left, sent, err := p.publish(e, todo)
			if retry {
				pub.republished += sent
			}
			if len(left) == 0 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%d messages still unconfirmed after 3m: %w", len(left), err)
			}
			if pub.retryCause == nil {
				pub.retryCause = err
			}
			p.close()
			todo = left
			time.Sleep(200 * time.Millisecond) // the broker is restarting
		}
		time.Sleep(pause)
	}
	return nil
}

// confirmedPublisher is a connection and a channel in confirm mode, opened
// when needed.
type confirmedPublisher struct {
	conn *amqp091.Connection
	ch   *amqp091.Channel
}

// publish sends entries and waits for their confirms; it returns those not
// confirmed, with the error that left them so, and how many it handed to
// the broker.
func (p *confirmedPublisher) publish(e *env, entries []entry) (left []entry, sent int, failed error) {
	if p.conn == nil {
		if err := p.open(e); err != nil {
			return entries, 0, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	confs := make([]*amqp091.DeferredConfirmation, 0, len(entries))
	for _, en := range entries {
		c, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, "", e.queue, true, false, ledgerPublishing(en))
		if err != nil {
			failed = fmt.Errorf("publish %s: %w", en.id, err)
			break
		}
		confs = append(confs, c)
	}
	for i, en := range entries {
		if i >= len(confs) {
			left = append(left, en)
			continue
		}
		// A confirm is false when the broker nacks and when the channel
		// closes before it comes: either way the message is not known to be
		// taken.
		ok, err := confs[i].WaitContext(ctx)
		if err != nil || !ok {
			left = append(left, en)
			if failed == nil {
				failed = errors.Join(fmt.Errorf("no confirm for %s", en.id), err)
			}
			continue
		}
		e.mu.Lock()
		e.confirm[en.id] = true
		e.mu.Unlock()
	}
	return left, len(confs), failed
}

func (p *confirmedPublisher) open(e *env) error {
	conn, err := amqp091.DialConfig(e.amqpURL, amqp091.Config{
		Properties: amqp091.Table{"connection_name": e.queue + " publisher"},
	})
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	ch, err := conn.Channel()
	if err == nil {
		err = ch.Confirm(false)
	}
	if err != nil {
		conn.Close()
		return fmt.Errorf("confirm channel: %w", err)
	}
	p.conn, p.ch = conn, ch
	return nil
}

func (p *confirmedPublisher) close() {
	if p.conn != nil {
		p.conn.Close()
	}
	p.conn, p.ch = nil, nil
}
