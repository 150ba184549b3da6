package dashboard

import (
	"context"
	"crypto/rand"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/inboxkit/inbox"
)

// Options configure the dashboard. The zero value serves a read-write
// dashboard at the root of the handler's URL space.
type Options struct {
	// Prefix is the path the handler is mounted under in the caller's
	// mux, without a trailing slash ("/ops/inbox"). The handler strips it
	// and writes it into every link. Defaults to "" (mounted at the root).
	Prefix string
	// ReadOnly hides every action, and the handler refuses them (403).
	// Defaults to false.
	ReadOnly bool
	// Logger receives one record per action taken (what, on which
	// messages or stream, how many) and page errors. Defaults to
	// slog.Default().
	Logger *slog.Logger
	// Refresh is how often the pages reload their data in the browser
	// (with JavaScript on). Defaults to DefaultRefresh; negative turns it
	// off.
	Refresh time.Duration
	// Timeout bounds the database work of one request. Defaults to
	// DefaultTimeout.
	Timeout time.Duration
	// Outbox, when set, adds the outbox's figures (pending, oldest pending,
	// sent in the last minute, dead) to the overview. Defaults to none.
	Outbox *inbox.Outbox
	// CSRFKey signs the CSRF tokens. Defaults to a random key per handler,
	// which is right unless several instances serve the same users behind
	// a load balancer: give them one shared key of at least 32 bytes.
	CSRFKey []byte
}

// Defaults of Options.
const (
	DefaultRefresh = 5 * time.Second
	DefaultTimeout = 10 * time.Second
)

// BodyPreviewBytes is how much of a message body the message page shows.
const BodyPreviewBytes = 4096

//go:embed templates/*.html
var templateFiles embed.FS

//go:embed static
var staticFiles embed.FS

// dashboard is the handler New returns.
type dashboard struct {
	in      *inbox.Inbox
	opts    Options
	log     *slog.Logger
	csrf    csrf
	pages   map[string]*template.Template
	mux     *http.ServeMux
	backlog *backlogSamples
}

// New returns the dashboard of in as an http.Handler. It reads and acts
// through in's public operations, so in need not be started.
func New(in *inbox.Inbox, opts Options) (http.Handler, error) {
	if in == nil {
		return nil, errors.New("dashboard: New: inbox is nil")
	}
	opts.Prefix = strings.TrimRight(opts.Prefix, "/")
	if opts.Prefix != "" && !strings.HasPrefix(opts.Prefix, "/") {
		return nil, fmt.Errorf("dashboard: Options.Prefix %q must start with /", opts.Prefix)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Refresh == 0 {
		opts.Refresh = DefaultRefresh
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	key := opts.CSRFKey
	if key == nil {
		key = make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, fmt.Errorf("dashboard: CSRF key: %w", err)
		}
	} else if len(key) < 32 {
		return nil, errors.New("dashboard: Options.CSRFKey needs at least 32 bytes")
	}
	d := &dashboard{
		in:      in,
		opts:    opts,
		log:     opts.Logger.With("component", "inbox-dashboard"),
		csrf:    csrf{key: key, path: opts.Prefix + "/"},
		backlog: newBacklogSamples(60),
	}
	var err error
	if d.pages, err = parsePages(); err != nil {
		return nil, err
	}
	static, err := fs.Sub(staticFiles, "static")
	if err != nil {
		return nil, fmt.Errorf("dashboard: assets: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", d.overview)
	mux.HandleFunc("GET /dead", d.deadList)
	mux.HandleFunc("GET /messages/{id}", d.message)
	mux.HandleFunc("GET /streams", d.streamList)
	mux.HandleFunc("GET /stream", d.stream)
	mux.HandleFunc("POST /dead/{action}", d.action(d.deadAction))
	mux.HandleFunc("POST /stream/{action}", d.action(d.streamAction))
	mux.Handle("GET /assets/", http.StripPrefix("/assets/", assetHandler(static)))
	d.mux = mux
	return d, nil
}

func (d *dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	// Everything is served from here: no other origin may run a script,
	// frame a page or receive a form.
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	if d.opts.Prefix == "" {
		d.mux.ServeHTTP(w, r)
		return
	}
	http.StripPrefix(d.opts.Prefix, d.mux).ServeHTTP(w, r)
}

// assetHandler serves the embedded assets, cacheable for a short while:
// they change only with the binary.
func assetHandler(static fs.FS) http.Handler {
	files := http.FileServerFS(static)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=300")
		files.ServeHTTP(w, r)
	})
}

// page is what every template receives.
type page struct {
	Title    string
	Nav      string
	Prefix   string
	ReadOnly bool
	CSRF     string
	Refresh  int64 // milliseconds; 0 for none
	Notice   string
	Data     any
}

// render writes one page with the layout around it.
func (d *dashboard) render(w http.ResponseWriter, r *http.Request, status int, name, title string, data any) {
	p := page{
		Title:    title,
		Nav:      name,
		Prefix:   d.opts.Prefix,
		ReadOnly: d.opts.ReadOnly,
		CSRF:     d.csrf.token(w, r),
		Notice:   notice(r),
		Data:     data,
	}
	if d.opts.Refresh > 0 && name != "confirm" && name != "error" {
		p.Refresh = d.opts.Refresh.Milliseconds()
	}
	var b strings.Builder
	if err := d.pages[name].ExecuteTemplate(&b, "layout", p); err != nil {
		d.log.Error("render page", "page", name, "error", err)
		http.Error(w, "internal error: the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(b.String()))
}

// fail renders an error page: not found as such, anything else logged
// and reported without detail, which may name database internals.
func (d *dashboard) fail(w http.ResponseWriter, r *http.Request, err error) {
	status, msg := http.StatusInternalServerError, "The dashboard could not read the inbox. The details are in the service's log."
	var bad badRequest
	switch {
	case errors.Is(err, inbox.ErrNotFound):
		status, msg = http.StatusNotFound, "Not found: it may have been retried, deleted or cleaned up meanwhile."
	case errors.As(err, &bad):
		status, msg = http.StatusBadRequest, string(bad)
	case errors.Is(err, context.DeadlineExceeded):
		d.log.Error("dashboard request timed out", "path", r.URL.Path, "error", err)
		msg = "The database did not answer in time."
	default:
		d.log.Error("dashboard request failed", "path", r.URL.Path, "error", err)
	}
	d.render(w, r, status, "error", "Error", msg)
}

// badRequest is a user mistake in a form or URL, shown as it is.
type badRequest string

func (e badRequest) Error() string { return string(e) }

// ctx bounds one request's database work.
func (d *dashboard) ctx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), d.opts.Timeout)
}

// notices are the outcomes an action redirects with, by code, so that a
// crafted link cannot put words on the page.
var notices = map[string]string{
	"retried":        "Retried %s dead message(s).",
	"deleted":        "Deleted %s dead message(s).",
	"stream-retried": "The stream was unparked.",
	"stream-skipped": "The stream was moved past what blocked it.",
}

func notice(r *http.Request) string {
	f, ok := notices[r.URL.Query().Get("done")]
	if !ok {
		return ""
	}
	if strings.Contains(f, "%s") {
		n := r.URL.Query().Get("n")
		if strings.Trim(n, "0123456789") != "" || n == "" || len(n) > 12 {
			return ""
		}
		return fmt.Sprintf(f, n)
	}
	return f
}
