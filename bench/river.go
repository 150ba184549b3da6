package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

// riverSettings is River's tuning for the comparison, printed with the
// results. River's defaults (100 ms fetch cooldown, 1 s poll interval) are
// made for latency-tolerant job queues; for a throughput race it gets many
// workers and a short cooldown, so the comparison is with River at its
// fastest on this machine rather than at its defaults.
type riverSettings struct {
	MaxWorkers        int
	FetchCooldown     time.Duration
	FetchPollInterval time.Duration
	PoolConns         int32
}

func (s riverSettings) String() string {
	return fmt.Sprintf("MaxWorkers=%d FetchCooldown=%s FetchPollInterval=%s pool=%d conns, jobs bulk-inserted with InsertManyFast",
		s.MaxWorkers, s.FetchCooldown, s.FetchPollInterval, s.PoolConns)
}

var defaultRiverSettings = riverSettings{
	MaxWorkers:        200,
	FetchCooldown:     time.Millisecond,
	FetchPollInterval: 20 * time.Millisecond,
	PoolConns:         10,
}

// noopArgs carries a payload of the benchmark's body size, so River's rows
// are as large as the inbox's.
type noopArgs struct {
	Payload string `json:"p"`
}

func (noopArgs) Kind() string { return "bench_noop" }

type noopWorker struct {
	river.WorkerDefaults[noopArgs]
	count *counter
}

func (w *noopWorker) Work(context.Context, *river.Job[noopArgs]) error {
	w.count.add()
	return nil
}

// runRiver bulk-inserts n no-op jobs on a fresh River schema, starts a
// client and measures how long until all are completed in the database.
func runRiver(ctx context.Context, n, bodySize int, s riverSettings) (Result, error) {
	pool, err := newPool(ctx, "bench river", s.PoolConns)
	if err != nil {
		return Result{}, err
	}
	defer pool.Close()
	schema := uniqueName("bench_river")
	if _, err := pool.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
		return Result{}, fmt.Errorf("create schema %s: %w", schema, err)
	}
	defer dropSchema(pool, schema)
	driver := riverpgxv5.New(pool)
	migrator, err := rivermigrate.New(driver, &rivermigrate.Config{Schema: schema, Logger: quietLogger()})
	if err != nil {
		return Result{}, fmt.Errorf("river migrator: %w", err)
	}
	if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return Result{}, fmt.Errorf("migrate river schema %s: %w", schema, err)
	}

	c := newCounter(n)
	workers := river.NewWorkers()
	river.AddWorker(workers, &noopWorker{count: c})
	client, err := river.NewClient(driver, &river.Config{
		Schema:            schema,
		Logger:            quietLogger(),
		FetchCooldown:     s.FetchCooldown,
		FetchPollInterval: s.FetchPollInterval,
		Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: s.MaxWorkers}},
		Workers:           workers,
	})
	if err != nil {
		return Result{}, fmt.Errorf("river client: %w", err)
	}

	payload := string(body(bodySize, time.Now())[8:]) // printable filler only: it is JSON text
	loadStart := time.Now()
	const chunk = 10_000
	for from := 0; from < n; from += chunk {
		params := make([]river.InsertManyParams, min(chunk, n-from))
		for i := range params {
			params[i] = river.InsertManyParams{Args: noopArgs{Payload: payload}}
		}
		if _, err := client.InsertManyFast(ctx, params); err != nil {
			return Result{}, fmt.Errorf("insert river jobs: %w", err)
		}
	}
	if _, err := pool.Exec(ctx, "ANALYZE "+pgx.Identifier{schema, "river_job"}.Sanitize()); err != nil {
		return Result{}, fmt.Errorf("analyze river_job: %w", err)
	}
	logf("river: inserted %d jobs in %s; settings: %s", n, time.Since(loadStart).Round(time.Millisecond), s)

	mem := startMemSampler(50 * time.Millisecond)
	cpu, start := startCPU(), time.Now()
	if err := client.Start(ctx); err != nil {
		mem.Stop()
		return Result{}, fmt.Errorf("start river: %w", err)
	}
	waitErr := waitCommitted(ctx, pool, c,
		"SELECT count(*) FROM "+pgx.Identifier{schema, "river_job"}.Sanitize()+" WHERE state = 'completed'", int64(n))
	elapsed := time.Since(start)
	cpuUse := cpu.stop(n)
	stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	stopErr := client.Stop(stopCtx)
	cancel()
	m := mem.Stop()
	if waitErr != nil {
		return Result{}, fmt.Errorf("river: %w", waitErr)
	}
	if stopErr != nil {
		return Result{}, fmt.Errorf("stop river: %w", stopErr)
	}
	return Result{
		Messages: n,
		Seconds:  elapsed.Seconds(),
		Rate:     float64(n) / elapsed.Seconds(),
		Memory:   &m,
		CPU:      cpuUse,
		Settings: s.String(),
	}, nil
}

// quietLogger passes on warnings and errors only, to stderr.
func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}
