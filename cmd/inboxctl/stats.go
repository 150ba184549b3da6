package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/inboxkit/inbox"
)

type topicJSON struct {
	Topic               string  `json:"topic"`
	Pending             int64   `json:"pending"`
	Ready               int64   `json:"ready"`
	Scheduled           int64   `json:"scheduled"`
	Running             int64   `json:"running"`
	Done                int64   `json:"done"`
	Dead                int64   `json:"dead"`
	OldestPendingSecs   float64 `json:"oldest_pending_seconds"`
	ProcessedLastMinute int64   `json:"processed_last_minute"`
}

type streamsJSON struct {
	Total        int64   `json:"total"`
	Parked       int64   `json:"parked"`
	Gap          int64   `json:"gap"`
	Working      int64   `json:"working"`
	MaxLagSecs   float64 `json:"max_lag_seconds"`
	MaxLagSource string  `json:"max_lag_source,omitempty"`
	MaxLagStream string  `json:"max_lag_stream,omitempty"`
}

type statsJSON struct {
	Schema     string      `json:"schema"`
	TakenAt    time.Time   `json:"taken_at"`
	Topics     []topicJSON `json:"topics"`
	Total      topicJSON   `json:"total"`
	Streams    streamsJSON `json:"streams"`
	CountLimit int64       `json:"count_limit"`
}

func toTopicJSON(t inbox.TopicStats) topicJSON {
	return topicJSON{
		Topic: t.Topic, Pending: t.Pending(), Ready: t.Ready, Scheduled: t.Scheduled, Running: t.Running,
		Done: t.Done, Dead: t.Dead, OldestPendingSecs: t.OldestPending.Seconds(), ProcessedLastMinute: t.ProcessedLastMinute,
	}
}

func (a *app) stats(ctx context.Context, args []string) error {
	fs := a.newFlagSet("stats")
	rest, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("stats: unexpected argument %q", rest[0])
	}
	if err := a.connect(ctx, true); err != nil {
		return err
	}
	var st inbox.Stats
	err = a.withTimeout(ctx, func(ctx context.Context) error {
		st, err = a.inbox.Stats(ctx)
		return err
	})
	if err != nil {
		return err
	}
	total := st.Total()
	total.Topic = "TOTAL"
	if a.opts.json {
		out := statsJSON{
			Schema: a.opts.schema, TakenAt: st.TakenAt.UTC(), Topics: []topicJSON{}, Total: toTopicJSON(total),
			Streams: streamsJSON{
				Total: st.Streams.Total, Parked: st.Streams.Parked, Gap: st.Streams.Gap, Working: st.Streams.Working,
				MaxLagSecs: st.Streams.MaxLag.Seconds(), MaxLagSource: st.Streams.MaxLagSource, MaxLagStream: st.Streams.MaxLagStream,
			},
			CountLimit: inbox.StatsCountLimit,
		}
		out.Total.Topic = ""
		for _, t := range st.Topics {
			out.Topics = append(out.Topics, toTopicJSON(t))
		}
		return a.printJSON(out)
	}
	const limit = inbox.StatsCountLimit
	t := newTable(a.stdout, "TOPIC", "PENDING", "READY", "SCHEDULED", "RUNNING", "DONE", "DEAD", "OLDEST PENDING", "DONE/MIN")
	for _, x := range append(st.Topics, total) {
		t.row(oneLine(x.Topic, 40), count(x.Pending(), limit), count(x.Ready, limit), count(x.Scheduled, limit),
			strconv.FormatInt(x.Running, 10), count(x.Done, limit), count(x.Dead, limit), age(x.OldestPending),
			count(x.ProcessedLastMinute, limit))
	}
	if err := t.flush(); err != nil {
		return err
	}
	s := st.Streams
	fmt.Fprintf(a.stdout, "\nstreams: %s in all, %d parked, %d waiting on a gap, %d being worked",
		count(s.Total, limit), s.Parked, s.Gap, s.Working)
	if s.MaxLag > 0 {
		fmt.Fprintf(a.stdout, "; furthest behind: %s/%s, due for %s", printable(s.MaxLagSource), printable(s.MaxLagStream), age(s.MaxLag))
	}
	fmt.Fprintln(a.stdout)
	if s.Parked > 0 || s.Gap > 0 {
		fmt.Fprintln(a.stdout, "(see 'inboxctl streams list')")
	}
	return nil
}
