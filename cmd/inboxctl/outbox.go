package main

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/inboxkit/inbox"
)

// outboxUsage is the help of the outbox command.
const outboxUsage = `outbox stats                          pending, oldest pending age, sent in the last minute, dead
  outbox list [--state S] [--limit N] [--after ID]
                                        outgoing messages (S: dead (default), pending, sent, all)
  outbox retry ID... | --all            put dead outgoing messages back to pending
  outbox delete ID... | --all --yes     delete dead outgoing messages (their streams go on without them)`

func (a *app) outbox(ctx context.Context, sub string, args []string) error {
	switch sub {
	case "stats":
		return a.outboxStats(ctx, args)
	case "list":
		return a.outboxList(ctx, args)
	case "retry", "delete":
		return a.outboxChange(ctx, sub, args)
	case "":
		return usagef("outbox needs stats, list, retry or delete:\n  %s", outboxUsage)
	}
	return usagef("outbox: unknown subcommand %q (want stats, list, retry or delete)", sub)
}

// connectOutbox connects and checks that the schema has outbox tables.
func (a *app) connectOutbox(ctx context.Context) (*inbox.Outbox, error) {
	if err := a.connect(ctx, false); err != nil {
		return nil, err
	}
	ob, err := inbox.NewOutbox(a.pool, inbox.OutboxConfig{Schema: a.opts.schema,
		Logger: slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return nil, err
	}
	if err := a.withTimeout(ctx, ob.CheckSchema); err != nil {
		return nil, fmt.Errorf("%w (run 'inboxctl --schema %s migrate up')", err, a.opts.schema)
	}
	return ob, nil
}

func (a *app) outboxStats(ctx context.Context, args []string) error {
	fs := a.newFlagSet("outbox stats")
	rest, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("outbox stats: unexpected argument %q", rest[0])
	}
	ob, err := a.connectOutbox(ctx)
	if err != nil {
		return err
	}
	var s inbox.OutboxStats
	if err := a.withTimeout(ctx, func(ctx context.Context) error { s, err = ob.Stats(ctx); return err }); err != nil {
		return err
	}
	if a.opts.json {
		return a.printJSON(map[string]any{
			"pending": s.Pending, "oldest_pending_seconds": s.OldestPending.Seconds(),
			"sent_last_minute": s.SentLastMinute, "dead": s.Dead, "taken_at": s.TakenAt.UTC(),
		})
	}
	t := newTable(a.stdout, "PENDING", "OLDEST PENDING", "SENT/MIN", "DEAD")
	t.row(count(s.Pending, inbox.StatsCountLimit), age(s.OldestPending), count(s.SentLastMinute, inbox.StatsCountLimit), count(s.Dead, inbox.StatsCountLimit))
	return t.flush()
}

// outboxJSON is an outgoing message as printed by --json, without its body.
type outboxJSON struct {
	ID         int64             `json:"id"`
	MessageID  string            `json:"message_id"`
	Exchange   string            `json:"exchange"`
	RoutingKey string            `json:"routing_key"`
	Type       string            `json:"type,omitempty"`
	Stream     string            `json:"stream,omitempty"`
	Seq        int64             `json:"seq,omitempty"`
	State      inbox.OutboxState `json:"state"`
	Attempts   int               `json:"attempts"`
	LastError  string            `json:"last_error,omitempty"`
	Headers    map[string]string `json:"headers"`
	BodyBytes  int               `json:"body_bytes"`
	CreatedAt  time.Time         `json:"created_at"`
	SentAt     *time.Time        `json:"sent_at,omitempty"`
}

func (a *app) outboxList(ctx context.Context, args []string) error {
	fs := a.newFlagSet("outbox list [--state S] [--limit N] [--after ID]")
	state := fs.String("state", "dead", "dead, pending, sent or all")
	limit := fs.Int("limit", 100, "list at most N messages")
	after := fs.Int64("after", 0, "only messages with a larger ID (to page)")
	rest, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("outbox list: unexpected argument %q", rest[0])
	}
	f := inbox.OutboxFilter{State: inbox.OutboxState(*state), AfterRowID: *after, Limit: *limit}
	switch f.State {
	case "all":
		f.State = ""
	case inbox.OutboxDead, inbox.OutboxPending, inbox.OutboxSent:
	default:
		return usagef("outbox list: --state %q is not dead, pending, sent or all", *state)
	}
	if *limit <= 0 {
		return usagef("--limit must be positive")
	}
	ob, err := a.connectOutbox(ctx)
	if err != nil {
		return err
	}
	var msgs []inbox.OutboxInfo
	if err := a.withTimeout(ctx, func(ctx context.Context) error { msgs, err = ob.ListMessages(ctx, f); return err }); err != nil {
		return err
	}
	if a.opts.json {
		out := make([]outboxJSON, 0, len(msgs))
		for _, m := range msgs {
			h := m.Headers
			if h == nil {
				h = map[string]string{}
			}
			out = append(out, outboxJSON{ID: m.RowID, MessageID: m.ID, Exchange: m.Exchange, RoutingKey: m.RoutingKey,
				Type: m.Type, Stream: m.Stream, Seq: m.Seq, State: m.State, Attempts: m.Attempts, LastError: m.LastError,
				Headers: h, BodyBytes: m.BodyBytes, CreatedAt: m.CreatedAt.UTC(), SentAt: m.SentAt})
		}
		return a.printJSON(out)
	}
	if len(msgs) == 0 {
		fmt.Fprintf(a.stdout, "no %s outgoing messages\n", map[bool]string{true: "matching", false: *state}[*state == "all"])
		return nil
	}
	t := newTable(a.stdout, "ID", "STATE", "MESSAGE ID", "ROUTE", "STREAM", "ATTEMPTS", "CREATED", "LAST ERROR")
	for _, m := range msgs {
		stream := "-"
		if m.Stream != "" {
			stream = oneLine(m.Stream, 24) + "#" + strconv.FormatInt(m.Seq, 10)
		}
		route := oneLine(m.Exchange+" → "+m.RoutingKey, 40)
		t.row(strconv.FormatInt(m.RowID, 10), string(m.State), oneLine(m.ID, 36), route, stream, strconv.Itoa(m.Attempts),
			timestamp(m.CreatedAt), oneLine(orDash(m.LastError), 80))
	}
	if err := t.flush(); err != nil {
		return err
	}
	if len(msgs) == *limit {
		fmt.Fprintf(a.stderr, "(the first %d; for more, add --after %d)\n", len(msgs), msgs[len(msgs)-1].RowID)
	}
	return nil
}

func (a *app) outboxChange(ctx context.Context, verb string, args []string) error {
	fs := a.newFlagSet("outbox " + verb + " ID... | --all")
	all := fs.Bool("all", false, "every dead outgoing message")
	yes := fs.Bool("yes", false, "delete: confirm deleting every dead outgoing message (--all)")
	rest, err := parse(fs, args)
	if err != nil {
		return err
	}
	var f inbox.OutboxFilter
	switch {
	case len(rest) > 0 && *all:
		return usagef("outbox %s: give message IDs or --all, not both", verb)
	case len(rest) > 0:
		if f.RowIDs, err = parseIDs(rest); err != nil {
			return err
		}
	case !*all:
		return usagef("outbox %s needs message IDs (the ID column of 'outbox list') or --all", verb)
	case verb == "delete" && !*yes:
		return usagef("outbox delete --all deletes every dead outgoing message; add --yes to do it (nothing was deleted)")
	}
	ob, err := a.connectOutbox(ctx)
	if err != nil {
		return err
	}
	past := map[string]string{"retry": "retried", "delete": "deleted"}[verb]
	var n int
	err = a.withTimeout(ctx, func(ctx context.Context) error {
		if verb == "delete" {
			n, err = ob.DeleteDeadMessages(ctx, f)
		} else {
			n, err = ob.RetryDeadMessages(ctx, f)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("%s outgoing messages: %w", verb, err)
	}
	if a.opts.json {
		if err := a.printJSON(map[string]int{past: n}); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(a.stdout, "%s %d dead outgoing messages\n", past, n)
	}
	if f.RowIDs != nil && n < len(f.RowIDs) {
		return fmt.Errorf("%d of the %d messages given were not %s: they are not dead, or do not exist (see 'inboxctl outbox list --state all')", len(f.RowIDs)-n, len(f.RowIDs), past)
	}
	return nil
}
