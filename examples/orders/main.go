// Command orders is an example consumer service built on the inbox: it
// keeps the state of orders from order.created, order.paid and
// order.shipped events that it consumes from RabbitMQ.
//
// Run it from the repository root, with PostgreSQL and RabbitMQ running:
//
//	go run ./examples/orders
//
// It uses INBOX_POSTGRES_URL and INBOX_AMQP_URL when set, else the local
// defaults. It creates a schema and a queue of its own (removed at the end),
// then plays both sides: a publisher sends the events of 20 orders, shuffled
// so that events often come before the ones they follow, with some sent
// twice; the service stores each delivery in the inbox, acks it, and
// handles the events exactly once each, in order per order. It prints what
// happened, checks the outcome, and exits with status 0 only if every check
// passed.
//
// The parts to read for writing a service of your own: orders.go (the
// handlers) and service.go (wiring the inbox and the receiver).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"time"

	"github.com/inboxkit/inbox/internal/devenv"
)

// config is the example's settings, from flags and the environment.
type config struct {
	postgresURL string
	amqpURL     string
	orders      int
	duplicates  int
	seed        uint64
	timeout     time.Duration
	keep        bool
	logger      *slog.Logger
}

func main() {
	cfg := config{
		postgresURL: devenv.PostgresURL(),
		amqpURL:     devenv.AMQPURL(),
	}
	flag.IntVar(&cfg.orders, "orders", 20, "number of orders (3 events each)")
	flag.IntVar(&cfg.duplicates, "duplicates", 15, "number of events the publisher sends twice")
	flag.Uint64Var(&cfg.seed, "seed", 1, "seed of the publisher's shuffling")
	flag.DurationVar(&cfg.timeout, "timeout", time.Minute, "give up after this long")
	flag.BoolVar(&cfg.keep, "keep", false, "keep the schema and queue afterwards, to look at them")
	verbose := flag.Bool("v", false, "show the inbox's and receiver's logs")
	flag.Parse()
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelDebug
	}
	cfg.logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	os.Exit(run(ctx, cfg, os.Stdout))
}

// run plays the example and returns the process's exit status.
func run(ctx context.Context, cfg config, out io.Writer) int {
	res, err := play(ctx, cfg, out)
	if err != nil {
		fmt.Fprintf(out, "\nFAIL: %v\n", err)
		return 1
	}
	if !res.passed() {
		fmt.Fprintf(out, "\nFAIL: %d of %d checks failed\n", res.failed(), len(res.checks))
		return 1
	}
	fmt.Fprintf(out, "\nPASS: all %d checks passed\n", len(res.checks))
	return 0
}
