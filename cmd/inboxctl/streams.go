package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/inboxkit/inbox"
)

func (a *app) streams(ctx context.Context, sub string, args []string) error {
	switch sub {
	case "list":
		return a.streamsList(ctx, args)
	case "retry", "skip":
		return a.streamChange(ctx, sub, args)
	case "":
		return usagef("streams needs list, retry or skip")
	}
	return usagef("streams: unknown subcommand %q (want list, retry or skip)", sub)
}

type streamJSON struct {
	Source          string     `json:"source"`
	Stream          string     `json:"stream"`
	State           string     `json:"state"`
	NextSeq         int64      `json:"next_seq"`
	Pending         int        `json:"pending"`
	HeadSeq         int64      `json:"head_seq,omitempty"`
	OldestPending   *time.Time `json:"oldest_pending,omitempty"`
	LagSeconds      float64    `json:"lag_seconds"`
	GapSince        *time.Time `json:"gap_since,omitempty"`
	ParkedAt        *time.Time `json:"parked_at,omitempty"`
	ParkedReason    string     `json:"parked_reason,omitempty"`
	ParkedMessageID int64      `json:"parked_message_id,omitempty"`
	Skipped         int64      `json:"skipped"`
	LastSkip        string     `json:"last_skip,omitempty"`
	MissingFrom     int64      `json:"missing_from,omitempty"`
	MissingUntil    int64      `json:"missing_until,omitempty"`
}

// streamState names what holds a stream up.
func streamState(s inbox.StreamInfo) string {
	switch {
	case s.ParkedAt != nil:
		return "parked"
	case s.GapSince != nil:
		return "gap"
	case s.Pending > 0:
		return "pending"
	}
	return "idle"
}

func (a *app) streamsList(ctx context.Context, args []string) error {
	fs := a.newFlagSet("streams list [--parked|--gap|--all]")
	parked := fs.Bool("parked", false, "only parked streams")
	gap := fs.Bool("gap", false, "only streams waiting on a missing sequence number")
	all := fs.Bool("all", false, "every stream, idle ones too")
	source := fs.String("source", "", "only streams of this source")
	limit := fs.Int("limit", 100, "list at most N streams")
	rest, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("streams list: unexpected argument %q", rest[0])
	}
	if *limit <= 0 {
		return usagef("--limit must be positive")
	}
	if err := a.connect(ctx, true); err != nil {
		return err
	}
	var list []inbox.StreamInfo
	var now time.Time
	err = a.withTimeout(ctx, func(ctx context.Context) error {
		if err := a.pool.QueryRow(ctx, "SELECT now()").Scan(&now); err != nil {
			return err
		}
		list, err = a.inbox.ListStreams(ctx, inbox.StreamFilter{Parked: *parked, Gap: *gap, All: *all, Source: *source, Limit: *limit})
		return err
	})
	if err != nil {
		return err
	}
	lag := func(s inbox.StreamInfo) time.Duration {
		if s.OldestPending == nil {
			return 0
		}
		return now.Sub(*s.OldestPending)
	}
	if a.opts.json {
		out := make([]streamJSON, 0, len(list))
		for _, s := range list {
			j := streamJSON{
				Source: s.Source, Stream: s.Stream, State: streamState(s), NextSeq: s.NextSeq, Pending: s.Pending,
				HeadSeq: s.HeadSeq, OldestPending: s.OldestPending, LagSeconds: lag(s).Seconds(), GapSince: s.GapSince,
				ParkedAt: s.ParkedAt, ParkedReason: s.ParkedReason, ParkedMessageID: s.ParkedMessage,
				Skipped: s.Skipped, LastSkip: s.LastSkip,
			}
			if s.GapSince != nil && s.HeadSeq > s.NextSeq {
				j.MissingFrom, j.MissingUntil = s.NextSeq, s.HeadSeq-1
			}
			out = append(out, j)
		}
		return a.printJSON(out)
	}
	if len(list) == 0 {
		fmt.Fprintln(a.stdout, "no streams match")
		return nil
	}
	t := newTable(a.stdout, "SOURCE", "STREAM", "STATE", "NEXT SEQ", "PENDING", "LAG", "SINCE", "WHY")
	for _, s := range list {
		since, why := "-", "-"
		switch {
		case s.ParkedAt != nil:
			since, why = timestampPtr(s.ParkedAt), oneLine(s.ParkedReason, 70)
		case s.GapSince != nil:
			since, why = timestampPtr(s.GapSince), fmt.Sprintf("waiting for seq %d..%d", s.NextSeq, s.HeadSeq-1)
		case s.LastSkip != "":
			why = "last skip: " + oneLine(s.LastSkip, 60)
		}
		t.row(oneLine(s.Source, 24), oneLine(s.Stream, 30), streamState(s), strconv.FormatInt(s.NextSeq, 10),
			strconv.Itoa(s.Pending), age(lag(s)), since, why)
	}
	if err := t.flush(); err != nil {
		return err
	}
	if len(list) == *limit {
		fmt.Fprintf(a.stderr, "(the first %d; raise --limit for more)\n", len(list))
	}
	return nil
}

func (a *app) streamChange(ctx context.Context, verb string, args []string) error {
	fs := a.newFlagSet("streams " + verb + " SOURCE STREAM")
	rest, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(rest) != 2 {
		return usagef("streams %s needs SOURCE and STREAM (as shown by 'inboxctl streams list')", verb)
	}
	source, stream := rest[0], rest[1]
	if err := a.connect(ctx, true); err != nil {
		return err
	}
	var info inbox.StreamInfo
	err = a.withTimeout(ctx, func(ctx context.Context) error {
		var err error
		if verb == "retry" {
			info, err = a.inbox.RetryStream(ctx, source, stream)
		} else {
			info, err = a.inbox.SkipStream(ctx, source, stream)
		}
		return err
	})
	if errors.Is(err, inbox.ErrNotFound) {
		return fmt.Errorf("stream %q of source %q not found in schema %s", stream, source, a.opts.schema)
	}
	if err != nil {
		return err
	}
	nextSeq := info.NextSeq
	note := ""
	if verb == "skip" {
		note = info.LastSkip
	}
	if a.opts.json {
		return a.printJSON(map[string]any{"source": source, "stream": stream, "action": verb, "next_seq": nextSeq, "note": note})
	}
	switch verb {
	case "retry":
		fmt.Fprintf(a.stdout, "stream %s/%s resumed at sequence %d\n", printable(source), printable(stream), nextSeq)
	default:
		fmt.Fprintf(a.stdout, "stream %s/%s %s; it resumes at sequence %d\n", printable(source), printable(stream), printable(note), nextSeq)
	}
	return nil
}
