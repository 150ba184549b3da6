package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/inboxkit/inbox"
)

// filterFlags are the flags that select dead messages.
type filterFlags struct {
	topic, errorText, since, until string
	limit                          int
	after                          int64
}

func (f *filterFlags) register(fs *flag.FlagSet, limitHelp string) {
	fs.StringVar(&f.topic, "topic", "", "only messages of this topic")
	fs.StringVar(&f.errorText, "error", "", "only messages whose last error contains this text (case-insensitive)")
	fs.StringVar(&f.since, "since", "", "only messages received at or after TIME (RFC 3339, a date, or an age such as 2h or 3d)")
	fs.StringVar(&f.until, "until", "", "only messages received before TIME")
	fs.IntVar(&f.limit, "limit", 0, limitHelp)
	fs.Int64Var(&f.after, "after", 0, "only messages with a larger ID (to page through a listing)")
}

// any reports whether a filter narrows the selection.
func (f *filterFlags) any() bool {
	return f.topic != "" || f.errorText != "" || f.since != "" || f.until != "" || f.after != 0
}

func (f *filterFlags) filter(now time.Time) (inbox.MessageFilter, error) {
	if f.limit < 0 {
		return inbox.MessageFilter{}, usagef("--limit %d is negative", f.limit)
	}
	out := inbox.MessageFilter{State: inbox.StateDead, Topic: f.topic, ErrorContains: f.errorText, AfterRowID: f.after, Limit: f.limit}
	var err error
	if out.Since, err = parseTime(f.since, now); err != nil {
		return out, usagef("--since: %v", err)
	}
	if out.Until, err = parseTime(f.until, now); err != nil {
		return out, usagef("--until: %v", err)
	}
	if !out.Since.IsZero() && !out.Until.IsZero() && !out.Since.Before(out.Until) {
		return out, usagef("--since %s is not before --until %s", f.since, f.until)
	}
	return out, nil
}

// parseTime reads an RFC 3339 time, a date (midnight UTC), or an age
// before now: a Go duration (90m, 1h30m) or a number of days (3d).
func parseTime(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.ParseFloat(days, 64); err == nil && n >= 0 {
			return now.Add(-time.Duration(n * 24 * float64(time.Hour))), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%q is not a time (2024-05-01T10:00:00Z), a date (2024-05-01) or an age (90m, 2h, 3d)", s)
}

func parseIDs(args []string) ([]int64, error) {
	ids := make([]int64, 0, len(args))
	for _, arg := range args {
		id, err := strconv.ParseInt(arg, 10, 64)
		if err != nil || id <= 0 {
			return nil, usagef("%q is not a message ID (the number in the ID column of 'dead list')", arg)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

func (a *app) dead(ctx context.Context, sub string, args []string) error {
	switch sub {
	case "list":
		return a.deadList(ctx, args)
	case "show":
		return a.deadShow(ctx, args)
	case "retry", "delete":
		return a.deadChange(ctx, sub, args)
	case "":
		return usagef("dead needs list, show, retry or delete")
	}
	return usagef("dead: unknown subcommand %q (want list, show, retry or delete)", sub)
}

// messageJSON is a message as printed by --json. Bodies are never printed.
type messageJSON struct {
	ID          int64             `json:"id"`
	Source      string            `json:"source"`
	MessageID   string            `json:"message_id"`
	Topic       string            `json:"topic"`
	Stream      string            `json:"stream,omitempty"`
	Seq         int64             `json:"seq,omitempty"`
	State       inbox.State       `json:"state"`
	Attempts    int               `json:"attempts"`
	LastError   string            `json:"last_error,omitempty"`
	Headers     map[string]string `json:"headers"`
	BodyBytes   int               `json:"body_bytes"`
	ReceivedAt  time.Time         `json:"received_at"`
	RunAt       time.Time         `json:"run_at"`
	ProcessedAt *time.Time        `json:"processed_at,omitempty"`
	OutOfOrder  bool              `json:"out_of_order,omitempty"`
}

func toMessageJSON(m inbox.MessageInfo) messageJSON {
	out := messageJSON{
		ID: m.RowID, Source: m.Source, MessageID: m.ID, Topic: m.Topic, Stream: m.Stream, Seq: m.Seq,
		State: m.State, Attempts: m.Attempts, LastError: m.LastError, Headers: m.Headers, BodyBytes: m.BodyBytes,
		ReceivedAt: m.ReceivedAt.UTC(), RunAt: m.RunAt.UTC(), ProcessedAt: m.ProcessedAt, OutOfOrder: m.OutOfOrder,
	}
	if out.Headers == nil {
		out.Headers = map[string]string{}
	}
	return out
}

func (a *app) deadList(ctx context.Context, args []string) error {
	fs := a.newFlagSet("dead list [filters]")
	var ff filterFlags
	ff.register(fs, "list at most N messages (default 100)")
	rest, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("dead list: unexpected argument %q (use dead show ID for one message)", rest[0])
	}
	f, err := ff.filter(time.Now())
	if err != nil {
		return err
	}
	if f.Limit == 0 {
		f.Limit = 100
	}
	if err := a.connect(ctx, true); err != nil {
		return err
	}
	var msgs []inbox.MessageInfo
	err = a.withTimeout(ctx, func(ctx context.Context) error {
		msgs, err = a.inbox.ListMessages(ctx, f)
		return err
	})
	if err != nil {
		return err
	}
	if a.opts.json {
		out := make([]messageJSON, 0, len(msgs))
		for _, m := range msgs {
			out = append(out, toMessageJSON(m))
		}
		return a.printJSON(out)
	}
	if len(msgs) == 0 {
		fmt.Fprintln(a.stdout, "no dead messages match")
		return nil
	}
	t := newTable(a.stdout, "ID", "TOPIC", "MESSAGE ID", "STREAM", "ATTEMPTS", "RECEIVED", "LAST ERROR")
	for _, m := range msgs {
		stream := "-"
		if m.Stream != "" {
			stream = oneLine(m.Stream, 24) + "#" + strconv.FormatInt(m.Seq, 10)
		}
		t.row(strconv.FormatInt(m.RowID, 10), oneLine(m.Topic, 30), oneLine(m.ID, 36), stream,
			strconv.Itoa(m.Attempts), timestamp(m.ReceivedAt), oneLine(orDash(m.LastError), 80))
	}
	if err := t.flush(); err != nil {
		return err
	}
	if len(msgs) == f.Limit {
		fmt.Fprintf(a.stderr, "(the first %d; for more, add --after %d or raise --limit)\n", len(msgs), msgs[len(msgs)-1].RowID)
	}
	return nil
}

func (a *app) deadShow(ctx context.Context, args []string) error {
	fs := a.newFlagSet("dead show ID")
	rest, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return usagef("dead show needs exactly one message ID")
	}
	ids, err := parseIDs(rest)
	if err != nil {
		return err
	}
	if err := a.connect(ctx, true); err != nil {
		return err
	}
	var m inbox.MessageInfo
	err = a.withTimeout(ctx, func(ctx context.Context) error {
		m, err = a.inbox.GetMessage(ctx, ids[0])
		return err
	})
	if errors.Is(err, inbox.ErrNotFound) {
		return fmt.Errorf("message %d not found in schema %s", ids[0], a.opts.schema)
	}
	if err != nil {
		return err
	}
	if a.opts.json {
		return a.printJSON(toMessageJSON(m))
	}
	w := a.stdout
	fmt.Fprintf(w, "id:           %d\n", m.RowID)
	fmt.Fprintf(w, "state:        %s\n", m.State)
	fmt.Fprintf(w, "topic:        %s\n", printable(m.Topic))
	fmt.Fprintf(w, "source:       %s\n", printable(m.Source))
	fmt.Fprintf(w, "message id:   %s\n", printable(m.ID))
	if m.Stream != "" {
		fmt.Fprintf(w, "stream:       %s (seq %d)\n", printable(m.Stream), m.Seq)
	}
	if m.OutOfOrder {
		fmt.Fprintf(w, "out of order: requeued by an operator to run below its stream's watermark\n")
	}
	fmt.Fprintf(w, "attempts:     %d\n", m.Attempts)
	fmt.Fprintf(w, "received at:  %s\n", timestamp(m.ReceivedAt))
	if m.State == inbox.StatePending {
		fmt.Fprintf(w, "next attempt: %s\n", timestamp(m.RunAt))
	}
	if m.ProcessedAt != nil {
		fmt.Fprintf(w, "processed at: %s\n", timestampPtr(m.ProcessedAt))
	}
	fmt.Fprintf(w, "body:         %d bytes\n", m.BodyBytes)
	fmt.Fprintf(w, "headers:")
	if len(m.Headers) == 0 {
		fmt.Fprintf(w, "      none\n")
	} else {
		fmt.Fprintln(w)
		keys := make([]string, 0, len(m.Headers))
		for k := range m.Headers {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "  %s: %s\n", printable(k), printable(m.Headers[k]))
		}
	}
	if m.LastError == "" {
		fmt.Fprintf(w, "last error:   none\n")
		return nil
	}
	fmt.Fprintln(w, "last error:")
	for _, line := range strings.Split(m.LastError, "\n") {
		fmt.Fprintf(w, "  %s\n", printable(line))
	}
	if m.State == inbox.StateDead {
		fmt.Fprintf(w, "\nreplay it with: inboxctl --schema %s dead retry %d\n", a.opts.schema, m.RowID)
	}
	return nil
}

// bulkBatch is how many messages one transaction of a bulk retry or
// delete changes: big enough to be quick, small enough not to hold many
// row locks for long.
const bulkBatch = 1000

func (a *app) deadChange(ctx context.Context, verb string, args []string) error {
	fs := a.newFlagSet("dead " + verb + " ID... | --all | [filters]")
	var ff filterFlags
	ff.register(fs, "change at most N messages (default: all that match)")
	all := fs.Bool("all", false, "every dead message (no filter)")
	yes := fs.Bool("yes", false, "delete: confirm a bulk delete (by filter or --all)")
	outOfOrder := fs.Bool("out-of-order", false, "retry: also requeue messages below their stream's watermark, to run out of order")
	batch := fs.Int("batch", bulkBatch, "messages changed per transaction")
	rest, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *batch <= 0 {
		return usagef("--batch must be positive")
	}
	f, err := ff.filter(time.Now())
	if err != nil {
		return err
	}
	if *outOfOrder && verb != "retry" {
		return usagef("--out-of-order applies to dead retry only")
	}
	past := map[string]string{"retry": "retried", "delete": "deleted"}[verb]
	var opts []inbox.RetryOption
	if *outOfOrder {
		opts = append(opts, inbox.OutOfOrder())
	}
	// Messages a retry refused (below their stream's watermark) stay dead;
	// the others are requeued, and the run goes on.
	var refused []inbox.BelowWatermark
	op := func(ctx context.Context, f inbox.MessageFilter) (int, error) {
		if verb == "delete" {
			return a.inbox.DeleteDeadMessages(ctx, f)
		}
		n, err := a.inbox.RetryDeadMessages(ctx, f, opts...)
		var below *inbox.BelowWatermarkError
		if errors.As(err, &below) {
			refused = append(refused, below.Messages...)
			return n, nil
		}
		return n, err
	}
	if len(rest) > 0 {
		if ff.any() || *all || ff.limit != 0 {
			return usagef("dead %s: give message IDs or a filter, not both", verb)
		}
		ids, err := parseIDs(rest)
		if err != nil {
			return err
		}
		if err := a.connect(ctx, true); err != nil {
			return err
		}
		if err := a.changeByID(ctx, verb, past, ids, func() int { return len(ids) - len(refused) }, op); err != nil {
			return err
		}
		return refusedRetries(refused)
	}
	if !ff.any() && !*all {
		return usagef("dead %s needs message IDs, a filter (--topic, --error, --since, --until, --after) or --all", verb)
	}
	if *all && ff.any() {
		return usagef("dead %s: --all selects every dead message; leave it out to use a filter", verb)
	}
	if err := a.connect(ctx, true); err != nil {
		return err
	}
	if verb == "delete" && !*yes {
		n, more, err := a.countDead(ctx, f)
		if err != nil {
			return err
		}
		if n == 0 {
			return a.reportChange(past, 0)
		}
		plus := ""
		if more {
			plus = " or more"
		}
		return usagef("dead delete would delete %d%s dead messages; add --yes to delete them (nothing was deleted)", n, plus)
	}
	total, err := a.bulk(ctx, f, *batch, past, op)
	if err != nil {
		return err
	}
	if err := a.reportChange(past, total); err != nil {
		return err
	}
	return refusedRetries(refused)
}

// refusedRetries explains the dead messages a retry left dead because
// their streams have moved past them.
func refusedRetries(refused []inbox.BelowWatermark) error {
	if len(refused) == 0 {
		return nil
	}
	const shown = 20
	var sb strings.Builder
	fmt.Fprintf(&sb, "%d dead messages were not retried: their streams have moved past them, so they would be taken for duplicates and never run:", len(refused))
	for i, m := range refused {
		if i == shown {
			fmt.Fprintf(&sb, "\n  and %d more", len(refused)-shown)
			break
		}
		fmt.Fprintf(&sb, "\n  ID %d: stream %s seq %d, watermark %d", m.RowID, printable(m.Stream), m.Seq, m.Watermark)
	}
	sb.WriteString("\nto run them anyway, after their successors, add --out-of-order")
	return errors.New(sb.String())
}

// changeByID applies op to the dead messages ids. want is how many of them
// it should change; fewer means some were not dead or do not exist.
func (a *app) changeByID(ctx context.Context, verb, past string, ids []int64, want func() int, op func(context.Context, inbox.MessageFilter) (int, error)) error {
	var n int
	err := a.withTimeout(ctx, func(ctx context.Context) error {
		var err error
		n, err = op(ctx, inbox.MessageFilter{RowIDs: ids})
		return err
	})
	if err != nil {
		return fmt.Errorf("%s messages %v: %w", verb, ids, err)
	}
	if err := a.reportChange(past, n); err != nil {
		return err
	}
	if n < want() {
		return fmt.Errorf("%d of the %d messages given were not %s: they are not dead, or do not exist (see 'inboxctl dead show ID')", want()-n, len(ids), past)
	}
	return nil
}

func (a *app) reportChange(past string, n int) error {
	if a.opts.json {
		return a.printJSON(map[string]int{past: n})
	}
	fmt.Fprintf(a.stdout, "%s %d dead messages\n", past, n)
	return nil
}

// bulk applies op to the dead messages matching f in batches of its own
// transactions, paging by row ID so that a message that dies again at once
// is not picked up a second time, and reports progress on stderr.
func (a *app) bulk(ctx context.Context, f inbox.MessageFilter, batch int, past string, op func(context.Context, inbox.MessageFilter) (int, error)) (int, error) {
	total, batches := 0, 0
	cursor := f.AfterRowID
	for {
		size := batch
		if f.Limit > 0 {
			size = min(size, f.Limit-total)
		}
		if size <= 0 {
			return total, nil
		}
		if err := ctx.Err(); err != nil {
			return total, fmt.Errorf("interrupted after %s %d messages: %w", past, total, err)
		}
		page := f
		page.AfterRowID, page.Limit = cursor, size
		var ids []int64
		var n int
		err := a.withTimeout(ctx, func(ctx context.Context) error {
			msgs, err := a.inbox.ListMessages(ctx, page)
			if err != nil || len(msgs) == 0 {
				return err
			}
			ids = make([]int64, len(msgs))
			for i, m := range msgs {
				ids[i] = m.RowID
			}
			change := f
			change.RowIDs, change.AfterRowID, change.Limit = ids, 0, 0
			n, err = op(ctx, change)
			return err
		})
		if err != nil {
			return total, fmt.Errorf("after %s %d messages: %w", past, total, err)
		}
		if len(ids) == 0 {
			return total, nil
		}
		total += n
		batches++
		cursor = ids[len(ids)-1]
		full := len(ids) == size
		if full || batches > 1 {
			fmt.Fprintf(a.stderr, "batch %d: %s %d (%d so far, up to ID %d)\n", batches, past, n, total, cursor)
		}
		if !full {
			return total, nil
		}
	}
}

// countDead counts the dead messages f matches, up to a bound: it is only
// for telling the operator what a delete would do.
func (a *app) countDead(ctx context.Context, f inbox.MessageFilter) (n int, more bool, err error) {
	const pages, pageSize = 10, 1000
	cursor := f.AfterRowID
	for i := 0; i < pages; i++ {
		page := f
		page.AfterRowID, page.Limit = cursor, pageSize
		if f.Limit > 0 {
			page.Limit = min(pageSize, f.Limit-n)
			if page.Limit <= 0 {
				return n, false, nil
			}
		}
		var msgs []inbox.MessageInfo
		err := a.withTimeout(ctx, func(ctx context.Context) error {
			var err error
			msgs, err = a.inbox.ListMessages(ctx, page)
			return err
		})
		if err != nil {
			return n, false, err
		}
		n += len(msgs)
		if len(msgs) < page.Limit {
			return n, false, nil
		}
		cursor = msgs[len(msgs)-1].RowID
	}
	return n, true, nil
}
