// Command inboxctl operates an inbox of github.com/inboxkit/inbox from the
// command line: it migrates the schema, shows statistics, lists, explains,
// replays and deletes dead messages, unblocks parked or gapped streams,
// operates the outbox and serves the web dashboard.
//
// Usage:
//
//	inboxctl [flags] command [arguments] [flags]
//
// Commands:
//
//	migrate up|down|status        apply, revert or list schema migrations
//	stats                         per-topic counts, streams, lag
//	dead list                     list dead messages (filters below)
//	dead show ID                  one message: headers, error, attempts
//	dead retry ID...|--all|FILTER put dead messages back to pending
//	                              (--out-of-order: also below the watermark)
//	dead delete ID...|FILTER --yes  delete dead messages
//	streams list [--parked|--gap|--all]
//	streams retry SOURCE STREAM   unpark a stream, requeueing its dead message
//	streams skip SOURCE STREAM    move a stream past the message or gap that blocks it
//	outbox stats|list|retry|delete  the outbox's figures, outgoing messages, replay
//	ui [--listen ADDR]            serve the web dashboard
//
// The database is --url, else $INBOX_POSTGRES_URL, else the local default
// postgres://postgres@127.0.0.1:5432/test?sslmode=disable. The schema is
// --schema, else $INBOX_SCHEMA, else "inbox". Flags may come before or
// after the command. Every listing prints JSON with --json.
//
// Exit status: 0 on success, 1 when the operation failed (database
// unreachable, message not found...), 2 on bad usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/internal/devenv"
	"github.com/inboxkit/inbox/internal/sqlident"
)

// defaultURL is the database of a development machine, as in the rest of
// the repository.
const defaultURL = devenv.DefaultPostgresURL

// Exit statuses.
const (
	exitOK      = 0
	exitFailed  = 1
	exitUsage   = 2
	usageHeader = `inboxctl operates a github.com/inboxkit/inbox inbox.

Usage:
  inboxctl [flags] command [arguments] [flags]

Commands:
  migrate up                      apply the migrations not yet applied
  migrate down [--to N] [--yes]   revert migrations above N (default: the latest one);
                                  reverting migration 1 drops the tables and needs --yes
  migrate status                  list migrations and whether they are applied
  stats                           per-topic counts, rates and ages; streams summary
  dead list [filters]             list dead messages, oldest first
  dead show ID                    one message with its headers, last error and attempts
  dead retry ID... | --all | [filters] [--out-of-order]
                                  put dead messages back to pending, attempts reset; one
                                  below its stream's watermark is refused unless
                                  --out-of-order (it then runs after its successors)
  dead delete ID... | --all --yes | [filters] --yes
                                  delete dead messages (bulk deletes need --yes)
  streams list [--parked|--gap|--all] [--source S]
                                  streams parked, waiting on a gap, or with pending messages
  streams retry SOURCE STREAM     unpark a stream; its dead message is requeued and runs next
  streams skip SOURCE STREAM      move a stream past the message (or missing sequence
                                  numbers) that blocks it
  outbox stats|list|retry|delete  the outbox: figures, outgoing messages, replay or delete
                                  dead ones ('inboxctl outbox' lists the details)
  ui [--listen ADDR] [--read-only]  serve the web dashboard (default 127.0.0.1:8080)

Filters of dead list, retry and delete:
  --topic T  --error TEXT  --since TIME  --until TIME  --limit N  --after ID
  TIME is RFC 3339 (2024-05-01T10:00:00Z), a date (2024-05-01) or an age (90m, 2h, 3d).

Flags (before or after the command):
`
	usageFooter = `
Environment: INBOX_POSTGRES_URL (the database), INBOX_SCHEMA (the schema).
Exit status: 0 success, 1 failure (database unreachable, not found...), 2 bad usage.
`
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// options are the flags every command accepts.
type options struct {
	url            string
	schema         string
	json           bool
	connectTimeout time.Duration
	timeout        time.Duration
}

// usageError is a bad command line: exit status 2, with the usage hint.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// app is one invocation's state.
type app struct {
	opts   options
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
	pool   *pgxpool.Pool
	inbox  *inbox.Inbox
}

// run executes one command line and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	a := &app{stdout: stdout, stderr: stderr, getenv: getenv}
	a.opts = options{
		url:            getenv("INBOX_POSTGRES_URL"),
		schema:         getenv("INBOX_SCHEMA"),
		connectTimeout: 10 * time.Second,
		timeout:        time.Minute,
	}
	if a.opts.url == "" {
		a.opts.url = defaultURL
	}
	if a.opts.schema == "" {
		a.opts.schema = inbox.DefaultSchema
	}
	err := a.dispatch(ctx, args)
	if a.pool != nil {
		a.pool.Close()
	}
	var ue *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "inboxctl: %s\nRun 'inboxctl help' for usage.\n", a.redact(err.Error()))
		return exitUsage
	default:
		fmt.Fprintf(stderr, "inboxctl: %s\n", a.redact(err.Error()))
		return exitFailed
	}
}

// commonFlags registers the flags every command accepts on fs, keeping
// the values already set (by the flags before the command).
func (a *app) commonFlags(fs *flag.FlagSet) {
	// Func flags print no default in the usage text, which must not show
	// a URL from the environment: it may hold a password.
	fs.Func("url", "PostgreSQL `URL` (default $INBOX_POSTGRES_URL, else "+defaultURL+")", func(s string) error {
		a.opts.url = s
		return nil
	})
	fs.Func("schema", "`schema` of the inbox tables (default $INBOX_SCHEMA, else inbox)", func(s string) error {
		a.opts.schema = s
		return nil
	})
	fs.BoolVar(&a.opts.json, "json", a.opts.json, "print JSON")
	fs.DurationVar(&a.opts.connectTimeout, "connect-timeout", a.opts.connectTimeout, "give up connecting after this long")
	fs.DurationVar(&a.opts.timeout, "timeout", a.opts.timeout, "bound on each database operation (each batch of a bulk operation)")
}

func (a *app) newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	a.commonFlags(fs)
	fs.Usage = func() {
		fmt.Fprintf(a.stderr, "Usage: inboxctl %s\n\nFlags:\n", name)
		fs.PrintDefaults()
	}
	return fs
}

// usage prints the command's help to w: stdout when asked for, stderr
// after a mistake.
func (a *app) usage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, usageHeader)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(a.stderr)
	fmt.Fprint(w, usageFooter)
}

func (a *app) dispatch(ctx context.Context, args []string) error {
	top := flag.NewFlagSet("inboxctl", flag.ContinueOnError)
	top.SetOutput(a.stderr)
	a.commonFlags(top)
	top.Usage = func() { a.usage(a.stderr, top) }
	if err := top.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{msg: err.Error()}
	}
	rest := top.Args()
	if len(rest) == 0 {
		a.usage(a.stderr, top)
		return usagef("no command given")
	}
	cmd, rest := rest[0], rest[1:]
	sub := ""
	if len(rest) > 0 {
		sub = rest[0]
	}
	switch cmd {
	case "help":
		a.usage(a.stdout, top)
		return nil
	case "migrate":
		return a.migrate(ctx, sub, tail(rest))
	case "stats":
		return a.stats(ctx, rest)
	case "dead":
		return a.dead(ctx, sub, tail(rest))
	case "streams":
		return a.streams(ctx, sub, tail(rest))
	case "ui":
		return a.ui(ctx, rest)
	case "outbox":
		return a.outbox(ctx, sub, tail(rest))
	}
	return usagef("unknown command %q", cmd)
}

func tail(args []string) []string {
	if len(args) == 0 {
		return nil
	}
	return args[1:]
}

// parse parses flags and positional arguments in any order (the standard
// flag package stops at the first positional one). Everything after "--"
// is positional.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional, after []string
	for i, arg := range args {
		if arg == "--" {
			args, after = args[:i], args[i+1:]
			break
		}
	}
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, &usageError{msg: err.Error()}
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
	return append(positional, after...), nil
}

// connect opens the pool and the Inbox on the schema, failing fast and
// clearly when the database does not answer. With needTables it also checks
// that the inbox tables exist.
func (a *app) connect(ctx context.Context, needTables bool) error {
	if err := sqlident.Validate(a.opts.schema); err != nil {
		return usagef("--schema: %v", err)
	}
	cfg, err := pgxpool.ParseConfig(a.opts.url)
	if err != nil {
		return usagef("database URL %s: %v", a.redactedURL(), err)
	}
	cfg.MaxConns = 4
	cfg.ConnConfig.ConnectTimeout = a.opts.connectTimeout
	if cfg.ConnConfig.RuntimeParams == nil {
		cfg.ConnConfig.RuntimeParams = map[string]string{}
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = "inboxctl"
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", a.redactedURL(), err)
	}
	a.pool = pool
	pingCtx, cancel := context.WithTimeout(ctx, a.opts.connectTimeout)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		return fmt.Errorf("cannot reach the database at %s: %w", a.redactedURL(), err)
	}
	// Warnings only: the library's Info logs are for services, not for a
	// command's output.
	logger := slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	a.inbox, err = inbox.New(pool, inbox.Config{Schema: a.opts.schema, Logger: logger})
	if err != nil {
		return err
	}
	if needTables {
		err := a.withTimeout(ctx, func(ctx context.Context) error { return inbox.CheckSchema(ctx, pool, a.opts.schema) })
		if errors.Is(err, inbox.ErrNotMigrated) {
			return fmt.Errorf("schema %q has no inbox tables: run 'inboxctl --schema %s migrate up' first", a.opts.schema, a.opts.schema)
		}
		if err != nil {
			return fmt.Errorf("look up the inbox tables: %w", err)
		}
	}
	return nil
}

// withTimeout runs fn under --timeout.
func (a *app) withTimeout(ctx context.Context, fn func(ctx context.Context) error) error {
	if a.opts.timeout <= 0 {
		return fn(ctx)
	}
	ctx, cancel := context.WithTimeout(ctx, a.opts.timeout)
	defer cancel()
	err := fn(ctx)
	if errors.Is(err, context.DeadlineExceeded) || (err != nil && ctx.Err() == context.DeadlineExceeded) {
		return fmt.Errorf("%w (after --timeout %s)", err, a.opts.timeout)
	}
	return err
}

// Where a password may sit in a connection string: the user info of a
// URL, a password query parameter, or a password keyword of the key=value
// form. Regular expressions, not url.Parse alone, so that a URL too broken
// to parse is still redacted.
var (
	urlPassword      = regexp.MustCompile(`^([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@?#]*:)([^@/?#]*)@`)
	queryPassword    = regexp.MustCompile(`([?&]password=)([^&#]*)`)
	keywordPassword  = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)
	passwordPatterns = []*regexp.Regexp{urlPassword, queryPassword, keywordPassword}
)

// redactedURL is the database URL without its password, fit for messages.
func (a *app) redactedURL() string {
	out := a.opts.url
	re := keywordPassword
	if strings.Contains(out, "://") {
		out = urlPassword.ReplaceAllString(out, "${1}xxxxx@")
		re = queryPassword
	}
	return re.ReplaceAllString(out, "${1}xxxxx")
}

// redact removes the password from any message about to be printed, in
// case a driver error quotes the connection string or part of it.
func (a *app) redact(msg string) string {
	if a.opts.url != "" {
		msg = strings.ReplaceAll(msg, a.opts.url, a.redactedURL())
	}
	for _, re := range passwordPatterns {
		m := re.FindStringSubmatch(a.opts.url)
		if m == nil {
			continue
		}
		pw := strings.Trim(m[2], "'")
		if unescaped, err := url.PathUnescape(pw); err == nil {
			// A password of a few characters would also match ordinary
			// words of the message; such a one is only ever printed
			// inside the URL, replaced whole above.
			if len(unescaped) >= 4 {
				msg = strings.ReplaceAll(msg, unescaped, "xxxxx")
			}
		}
		if len(pw) >= 4 {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
		}
	}
	return msg
}
