// Command bench measures the inbox against the local RabbitMQ and
// PostgreSQL, side by side with what bounds it and with its peers, in one
// run: the broker and database ceilings, ingest through the amqp receiver
// against a naive consumer and Watermill, processing against River and the
// database's own processing ceiling, processing beside rows that cannot
// run, ordered processing, latency, the outbox relay against plain
// confirmed publishing (and its commit-to-handler latency), and processing
// with a million pending rows. With -soak it runs a long, steady load instead and reports it
// bucket by bucket.
//
// Ratios, not absolute numbers, are the point: each result is printed as a
// ratio to its ceiling or peer, with the target it should meet. See
// docs/benchmarks.md for the latest figures.
//
//	cd bench && go run .                 # the full run, a few minutes
//	cd bench && go run . -smoke          # every case on a few hundred messages
//	cd bench && go run . -only processing,ordered -messages 50000
//	cd bench && go run . -only relay     # relay vs amqp091-go with confirms
//	cd bench && go run . -soak 10m       # the soak, about 11 minutes
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Options are the command's flags.
type Options struct {
	Messages         int           `json:"messages"`
	Body             int           `json:"body_bytes"`
	Load             int           `json:"load_per_sec"`
	LatencyDuration  time.Duration `json:"latency_duration_ns"`
	ScaleRows        int           `json:"scale_rows"`
	BlockedRows      int           `json:"blocked_rows"`
	Rounds           int           `json:"rounds"`
	InboxWorkers     int           `json:"inbox_workers"`
	InboxBatch       int           `json:"inbox_batch"`
	RiverWorkers     int           `json:"river_workers"`
	ReceiverPrefetch int           `json:"receiver_prefetch"`
	ReceiverBatch    int           `json:"receiver_batch"`
	ReceiverLinger   time.Duration `json:"receiver_linger_ns"`
	RelayBatch       int           `json:"relay_batch"`
	RelayLoad        int           `json:"relay_load_per_sec"`
	Only             []string      `json:"only,omitempty"`
	Smoke            bool          `json:"smoke"`
	Soak             SoakOptions   `json:"soak"`
	JSON             string        `json:"-"`
	MD               string        `json:"-"`
	Chart            string        `json:"-"`
	CPUProfile       string        `json:"-"`
	Redraw           string        `json:"-"`
}

// caseNames are the values -only accepts, in the order they run.
var caseNames = []string{"ceiling", "ingest", "processing", "blocked", "ordered", "latency", "relay", "scale"}

func main() {
	opts, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runMain(ctx, opts); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (Options, error) {
	var o Options
	var only string
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.IntVar(&o.Messages, "messages", 20000, "messages per throughput case")
	fs.IntVar(&o.Body, "body", 512, "message body size in bytes")
	fs.IntVar(&o.Load, "load", 1000, "offered load of the fixed-rate latency run, in messages per second")
	fs.DurationVar(&o.LatencyDuration, "latency-duration", 10*time.Second, "how long the fixed-rate latency run publishes")
	fs.IntVar(&o.ScaleRows, "scale-rows", 1_000_000, "pending rows in the scale case")
	fs.IntVar(&o.BlockedRows, "blocked-rows", 100_000, "rows that cannot run in the blocked case, half in a parked stream, half of a topic without a handler")
	fs.IntVar(&o.Rounds, "rounds", 3, "measured rounds of each throughput case; the fastest counts")
	fs.IntVar(&o.InboxWorkers, "inbox-workers", 4, "inbox Config.Workers in the processing cases")
	fs.IntVar(&o.InboxBatch, "inbox-batch", 0, "inbox Config.BatchSize in the processing cases (0: the library default)")
	fs.IntVar(&o.RiverWorkers, "river-workers", defaultRiverSettings.MaxWorkers, "River MaxWorkers")
	fs.IntVar(&o.ReceiverPrefetch, "receiver-prefetch", 0, "amqp receiver Config.Prefetch (0: the library default)")
	fs.IntVar(&o.ReceiverBatch, "receiver-batch", 0, "amqp receiver Config.BatchSize (0: the library default)")
	fs.DurationVar(&o.ReceiverLinger, "receiver-linger", 0, "amqp receiver Config.BatchLinger (0: the library default)")
	fs.IntVar(&o.RelayLoad, "relay-load", 300, "offered load of the relay's latency run, in messages per second, each in a transaction of its own")
	fs.IntVar(&o.RelayBatch, "relay-batch", 1000, "relay BatchSize, and the confirms the raw publisher it is compared with has in flight")
	fs.StringVar(&only, "only", "", "comma-separated cases to run, of: "+strings.Join(caseNames, ", "))
	fs.BoolVar(&o.Smoke, "smoke", false, "every case on a few hundred messages: checks the program works, measures nothing")
	fs.StringVar(&o.JSON, "json", "", "write the results as JSON to this file")
	fs.StringVar(&o.MD, "md", "", "write the Markdown tables to this file")
	fs.StringVar(&o.Chart, "chart", "", "write a chart of the results to this .png or .svg file (and the soak's to NAME-soak.EXT)")
	o.Soak.flags(fs)
	fs.StringVar(&o.CPUProfile, "cpuprofile", "", "write a CPU profile of the whole run to this file")
	fs.StringVar(&o.Redraw, "redraw", "", "run nothing: write the tables (-md) and charts (-chart) of the report in this JSON file")
	if err := fs.Parse(args); err != nil {
		return Options{}, err
	}
	if fs.NArg() > 0 {
		return Options{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if only != "" {
		for _, name := range strings.Split(only, ",") {
			name = strings.TrimSpace(name)
			if !slices.Contains(caseNames, name) {
				return Options{}, fmt.Errorf("-only: unknown case %q (cases: %s)", name, strings.Join(caseNames, ", "))
			}
			o.Only = append(o.Only, name)
		}
	}
	if o.Smoke {
		o.smoke()
	}
	return o, o.validate()
}

// smoke shrinks every case to a few seconds.
func (o *Options) smoke() {
	o.Messages = min(o.Messages, 300)
	o.ScaleRows = min(o.ScaleRows, 10*o.Messages)
	o.BlockedRows = min(o.BlockedRows, 10*o.Messages)
	o.Load = min(o.Load, 300)
	o.RelayLoad = min(o.RelayLoad, 300)
	o.LatencyDuration = min(o.LatencyDuration, time.Second)
	o.Rounds = 1
}

func (o Options) validate() error {
	switch {
	case o.Messages < 1:
		return errors.New("-messages must be positive")
	case o.Body < 8:
		return errors.New("-body must be at least 8 bytes (they carry the send time)")
	case o.Load < 1 || o.RelayLoad < 1:
		return errors.New("-load and -relay-load must be positive")
	case o.LatencyDuration <= 0:
		return errors.New("-latency-duration must be positive")
	case o.Rounds < 1:
		return errors.New("-rounds must be positive")
	case o.ScaleRows < o.Messages*o.Rounds:
		return errors.New("-scale-rows must be at least -messages times -rounds")
	case o.BlockedRows < 2:
		return errors.New("-blocked-rows must be at least 2")
	case o.InboxWorkers < 1 || o.RiverWorkers < 1:
		return errors.New("-inbox-workers and -river-workers must be positive")
	case o.RelayBatch < 1 || o.RelayBatch > 65535:
		return errors.New("-relay-batch must be 1 to 65535")
	case o.InboxBatch < 0 || o.ReceiverPrefetch < 0 || o.ReceiverBatch < 0 || o.ReceiverLinger < 0:
		return errors.New("-inbox-batch and the -receiver flags must not be negative")
	case o.Chart != "" && !slices.Contains([]string{".png", ".svg"}, filepath.Ext(o.Chart)):
		return errors.New("-chart must name a .png or .svg file")
	}
	return o.Soak.validate()
}

func (o Options) runs(name string) bool {
	return len(o.Only) == 0 || slices.Contains(o.Only, name)
}

func runMain(ctx context.Context, opts Options) error {
	if opts.Redraw != "" {
		rep, err := readReport(opts.Redraw)
		if err != nil {
			return err
		}
		return writeOutputs(rep, Options{MD: opts.MD, Chart: opts.Chart})
	}
	if opts.CPUProfile != "" {
		f, err := os.Create(opts.CPUProfile)
		if err != nil {
			return fmt.Errorf("create CPU profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("start CPU profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	rep, err := run(ctx, opts)
	if rep.hasFigures() {
		if werr := writeOutputs(rep, opts); werr != nil {
			return errors.Join(err, werr)
		}
	}
	return err
}

// hasFigures reports whether rep holds anything to write: results, or a
// soak (which, run at a given rate, records no result).
func (r *Report) hasFigures() bool {
	return r != nil && (len(r.Results) > 0 || r.Soak != nil)
}

// writeOutputs prints the tables and writes the files asked for.
func writeOutputs(rep *Report, opts Options) error {
	fmt.Println()
	if err := rep.writeMarkdown(os.Stdout); err != nil {
		return err
	}
	if opts.MD != "" {
		f, err := os.Create(opts.MD)
		if err != nil {
			return fmt.Errorf("create %s: %w", opts.MD, err)
		}
		err = rep.writeMarkdown(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", opts.MD, err)
		}
	}
	if opts.JSON != "" {
		if err := rep.writeJSON(opts.JSON); err != nil {
			return err
		}
	}
	if opts.Chart != "" {
		if err := writeCharts(rep, opts.Chart); err != nil {
			return err
		}
	}
	return nil
}

// run runs the selected cases in order and returns the report. On an error
// it returns the results so far with the error.
func run(ctx context.Context, opts Options) (*Report, error) {
	b := &bench{opts: opts, rep: &Report{Started: time.Now(), Options: opts}}
	defer b.close()
	if err := b.describeMachine(ctx); err != nil {
		return nil, err
	}
	if opts.Soak.Duration > 0 {
		logf("soak for %s", opts.Soak.Duration)
		err := b.soak(ctx)
		b.rep.compare()
		return b.rep, err
	}
	for _, c := range b.cases() {
		if !slices.ContainsFunc(c.names, opts.runs) {
			continue
		}
		logf("case %s", strings.Join(c.names, " and "))
		if err := c.run(ctx); err != nil {
			b.rep.compare()
			return b.rep, fmt.Errorf("case %s: %w", strings.Join(c.names, " and "), err)
		}
	}
	b.rep.compare()
	return b.rep, nil
}

// bench is one run's state.
type bench struct {
	opts   Options
	rep    *Report
	broker *broker
}

// benchCase runs the cases it names that -only selects. The ceilings and
// ingest run as one, their rounds interleaved, because the ingest ratios
// are only as good as the ceiling measured under the same conditions.
type benchCase struct {
	names []string
	run   func(context.Context) error
}

func (b *bench) cases() []benchCase {
	return []benchCase{
		{[]string{"ceiling", "ingest"}, b.ceilingsAndIngest},
		{[]string{"processing"}, b.processing},
		{[]string{"blocked"}, b.blocked},
		{[]string{"ordered"}, b.ordered},
		{[]string{"latency"}, b.latency},
		{[]string{"relay"}, b.relay},
		{[]string{"scale"}, b.scale},
	}
}

func (b *bench) close() {
	if b.broker != nil {
		b.broker.close()
	}
}

// amqp returns the benchmark's own broker connection, opened on first use.
func (b *bench) amqp() (*broker, error) {
	if b.broker == nil {
		br, err := dialBroker()
		if err != nil {
			return nil, err
		}
		b.broker = br
	}
	return b.broker, nil
}

// record adds a result and prints it at once, so a long run shows progress.
func (b *bench) record(id, title string, res Result) {
	res.ID, res.Title = id, title
	b.rep.Results = append(b.rep.Results, res)
	logf("  %-40s %9s msg/s  (%d in %.2fs)", title, thousands(res.Rate), res.Messages, res.Seconds)
}

func (b *bench) describeMachine(ctx context.Context) error {
	m := Machine{GoVersion: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH, CPUs: runtime.NumCPU()}
	pool, err := newPool(ctx, "bench", 1)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := pool.QueryRow(ctx, "SHOW server_version").Scan(&m.Postgres); err != nil {
		return fmt.Errorf("read PostgreSQL version: %w", err)
	}
	m.Postgres, _, _ = strings.Cut(m.Postgres, " ")
	if b.needsBroker() {
		br, err := b.amqp()
		if err != nil {
			return err
		}
		if v, ok := br.conn.Properties["version"].(string); ok {
			m.RabbitMQ = v
		}
	}
	b.rep.Machine = m
	return nil
}

func (b *bench) needsBroker() bool {
	return b.opts.Soak.Duration > 0 || b.opts.runs("ceiling") || b.opts.runs("ingest") || b.opts.runs("latency") || b.opts.runs("relay")
}
