// Command dashboard is a service that mounts the inbox dashboard next to
// its own routes, behind HTTP basic authentication:
//
//	DASHBOARD_PASSWORD=choose-one go run ./examples/dashboard
//
// then open http://127.0.0.1:8081/ops/inbox/ (user "operator"), and store
// orders through the service's own route; a negative total fails for good
// and shows up among the dead messages:
//
//	curl -X POST 'http://127.0.0.1:8081/orders?id=o-1&total=12'
//	curl -X POST 'http://127.0.0.1:8081/orders?id=o-2&total=-3'
//
// The dashboard has no login of its own: the service decides who may see
// it (here, one user from the environment; in production, the service's
// own authentication). It uses INBOX_POSTGRES_URL when set, else the local
// default, and the schema "inbox_dashboard".
package main

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/dashboard"
	"github.com/inboxkit/inbox/internal/devenv"
	"github.com/inboxkit/inbox/migrations"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	s := settings{
		postgresURL: devenv.PostgresURL(),
		schema:      "inbox_dashboard",
		user:        envOr("DASHBOARD_USER", "operator"),
		password:    os.Getenv("DASHBOARD_PASSWORD"),
	}
	if s.password == "" {
		slog.Error("set DASHBOARD_PASSWORD: the dashboard is not served without a password")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", envOr("LISTEN", "127.0.0.1:8081"))
	if err != nil {
		slog.Error("listen", "error", err)
		os.Exit(1)
	}
	if err := run(ctx, s, ln); err != nil {
		slog.Error("service failed", "error", err)
		os.Exit(1)
	}
}

type settings struct {
	postgresURL, schema string
	user, password      string
}

func run(ctx context.Context, s settings, ln net.Listener) error {
	pool, err := pgxpool.New(ctx, s.postgresURL)
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	defer pool.Close()
	if _, err := migrations.Up(ctx, pool, s.schema); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	in, err := inbox.New(pool, inbox.Config{Schema: s.schema})
	if err != nil {
		return err
	}
	in.Handle("order", func(ctx context.Context, tx pgx.Tx, m *inbox.Message) error {
		total, err := strconv.ParseFloat(string(m.Body), 64)
		if err != nil || total < 0 {
			return inbox.Permanent(fmt.Errorf("order %s: total %q is not a positive number", m.ID, m.Body))
		}
		return nil
	})
	if err := in.Start(ctx); err != nil {
		return err
	}
	defer in.Stop(context.Background())

	mux := http.NewServeMux()
	// The service's own routes...
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("POST /orders", func(w http.ResponseWriter, r *http.Request) {
		id, total := r.URL.Query().Get("id"), r.URL.Query().Get("total")
		res, err := in.Store(r.Context(), inbox.Message{ID: id, Topic: "order", Body: []byte(total)})
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "stored %d, duplicates %d\n", res.Stored, res.Duplicates)
	})
	// ...and the dashboard under its prefix, behind the service's
	// authentication.
	ui, err := dashboard.New(in, dashboard.Options{Prefix: "/ops/inbox"})
	if err != nil {
		return err
	}
	mux.Handle("/ops/inbox/", basicAuth(s.user, s.password, ui))

	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	slog.Info("serving; Ctrl-C to stop", "dashboard", "http://"+ln.Addr().String()+"/ops/inbox/")
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return err
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// basicAuth lets through only requests with the user and password: the
// wrapping pattern for any authentication (a session check, an SSO proxy's
// header...).
func basicAuth(user, password string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		// Constant-time comparisons, so the answer's timing does not
		// tell how much of a guess was right.
		userOK := subtle.ConstantTimeCompare([]byte(u), []byte(user)) == 1
		passOK := subtle.ConstantTimeCompare([]byte(p), []byte(password)) == 1
		if !ok || !userOK || !passOK {
			w.Header().Set("WWW-Authenticate", `Basic realm="inbox dashboard", charset="UTF-8"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
