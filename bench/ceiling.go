package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
)

// Tuning of the database ceiling: several writers, each inserting large
// batches in one statement, as fast as PostgreSQL takes them.
const (
	dbCeilingWriters = 4
	dbCeilingBatch   = 500
)

// runDBCeiling inserts n rows into a fresh inbox table with batched
// INSERT ... ON CONFLICT DO NOTHING from several connections: the fastest
// the database stores messages with the inbox's table and indexes.
func runDBCeiling(ctx context.Context, n, bodySize int) (Result, error) {
	pool, err := newPool(ctx, "bench db ceiling", dbCeilingWriters+1)
	if err != nil {
		return Result{}, err
	}
	defer pool.Close()
	schema, drop, err := inboxSchema(ctx, pool, "bench_dbceil")
	if err != nil {
		return Result{}, err
	}
	defer drop()
	insert := `
INSERT INTO ` + pgx.Identifier{schema}.Sanitize() + `.inbox_messages (source, message_id, topic, headers, body)
SELECT 'bench', u.id, $2, '{}', u.body FROM unnest($1::text[], $3::bytea[]) AS u(id, body)
ON CONFLICT (source, message_id) DO NOTHING`

	batches := make(chan [2]int)
	g, gctx := errgroup.WithContext(ctx)
	cpu, start := startCPU(), time.Now()
	g.Go(func() error {
		defer close(batches)
		for from := 0; from < n; from += dbCeilingBatch {
			select {
			case batches <- [2]int{from, min(from+dbCeilingBatch, n)}:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	for range dbCeilingWriters {
		g.Go(func() error {
			for b := range batches {
				ids := make([]string, 0, b[1]-b[0])
				bodies := make([][]byte, 0, b[1]-b[0])
				for i := b[0]; i < b[1]; i++ {
					ids = append(ids, fmt.Sprintf("m-%08d", i))
					bodies = append(bodies, body(bodySize, time.Now()))
				}
				if _, err := pool.Exec(gctx, insert, ids, benchTopic, bodies); err != nil {
					return fmt.Errorf("insert batch %d..%d: %w", b[0], b[1], err)
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return Result{}, err
	}
	elapsed := time.Since(start)
	return Result{
		Messages: n,
		Seconds:  elapsed.Seconds(),
		Rate:     float64(n) / elapsed.Seconds(),
		CPU:      cpu.stop(n),
		Settings: fmt.Sprintf("%d writers, %d rows per statement, autocommit", dbCeilingWriters, dbCeilingBatch),
	}, nil
}

// Tuning of the broker ceiling: a deep prefetch and one multiple-ack per
// batch of deliveries.
const (
	brokerCeilingPrefetch = 2000
	brokerCeilingAckEvery = 250
)

// runBrokerCeiling publishes n persistent messages, then drains the queue
// with a plain amqp091-go consumer that does nothing but ack: the fastest
// any consumer can take messages off this broker.
func runBrokerCeiling(ctx context.Context, b *broker, n, bodySize int) (Result, error) {
	queue, ch, cleanup, err := b.backlogConsumer(ctx, "bench_ceiling", n, bodySize, brokerCeilingPrefetch)
	if err != nil {
		return Result{}, err
	}
	defer cleanup()
	cpu, start := startCPU(), time.Now()
	deliveries, err := ch.ConsumeWithContext(ctx, queue, "", false, false, false, false, nil)
	if err != nil {
		return Result{}, fmt.Errorf("consume %s: %w", queue, err)
	}
	got := 0
	for got < n {
		d, err := nextDelivery(ctx, deliveries)
		if err != nil {
			return Result{}, err
		}
		got++
		// Ack many at once. The ceiling knows how many messages come, so it
		// needs no timer for a last, partial batch.
		if got%brokerCeilingAckEvery == 0 || got == n {
			if err := d.Ack(true); err != nil {
				return Result{}, fmt.Errorf("ack: %w", err)
			}
		}
	}
	elapsed := time.Since(start)
	cpuUse := cpu.stop(n)
	_ = ch.Close()
	return Result{
		Messages: n,
		Seconds:  elapsed.Seconds(),
		Rate:     float64(n) / elapsed.Seconds(),
		CPU:      cpuUse,
		Settings: fmt.Sprintf("prefetch %d, multiple-ack every %d, %d-byte persistent messages pre-published", brokerCeilingPrefetch, brokerCeilingAckEvery, bodySize),
	}, nil
}

// runDBProcessingCeiling loads n pending rows into a fresh inbox table,
// then works them off with the inbox's own claim and mark-done statements
// as plain SQL: workers transactions at a time, each claiming batch rows
// (FOR UPDATE SKIP LOCKED, reading the same columns), marking them done in
// one UPDATE and committing. No handler, no wake-ups, no bookkeeping: the
// fastest this database processes inbox rows in batches of that size.
func runDBProcessingCeiling(ctx context.Context, n, bodySize, workers, batch int) (Result, error) {
	pool, err := newPool(ctx, "bench db processing ceiling", int32(workers+1))
	if err != nil {
		return Result{}, err
	}
	defer pool.Close()
	schema, drop, err := inboxSchema(ctx, pool, "bench_dbproc")
	if err != nil {
		return Result{}, err
	}
	defer drop()
	if err := loadPending(ctx, pool, schema, n, bodySize, 0); err != nil {
		return Result{}, err
	}
	q := pgx.Identifier{schema}.Sanitize()
	// The inbox's claim shape (per handled topic, through the
	// (topic, run_at, id) index of its migration 008).
	claim := `
SELECT c.id, c.source, c.message_id, c.topic, c.headers, c.body, c.attempts, c.received_at
FROM unnest($2::text[]) AS t(topic)
CROSS JOIN LATERAL (
    SELECT m.id, m.source, m.message_id, m.topic, m.headers, m.body, m.attempts, m.received_at, m.run_at
    FROM ` + q + `.inbox_messages m
    WHERE m.state = 'pending' AND m.stream IS NULL AND m.topic = t.topic AND m.run_at <= now()
    ORDER BY m.run_at, m.id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
) c
ORDER BY c.run_at, c.id
LIMIT $1`
	markDone := `
UPDATE ` + q + `.inbox_messages
SET state = 'done', attempts = attempts + 1, processed_at = now(), body = NULL, last_error = NULL
WHERE id = ANY($1)`
	topics := []string{benchTopic}
	// claimBatch claims, marks done and commits one batch; 0 when none is left.
	claimBatch := func(ctx context.Context) (int, error) {
		tx, err := pool.Begin(ctx)
		if err != nil {
			return 0, err
		}
		defer func() { _ = tx.Rollback(ctx) }()
		rows, err := tx.Query(ctx, claim, batch, topics)
		if err != nil {
			return 0, err
		}
		var ids []int64
		for rows.Next() {
			var (
				source, msgID, topic string
				rowID                int64
				headers              map[string]string
				payload              []byte
				attempts             int
				received             time.Time
			)
			if err := rows.Scan(&rowID, &source, &msgID, &topic, &headers, &payload, &attempts, &received); err != nil {
				rows.Close()
				return 0, err
			}
			ids = append(ids, rowID)
		}
		if err := rows.Err(); err != nil {
			return 0, err
		}
		if len(ids) == 0 {
			return 0, nil
		}
		if _, err := tx.Exec(ctx, markDone, ids); err != nil {
			return 0, err
		}
		return len(ids), tx.Commit(ctx)
	}

	g, gctx := errgroup.WithContext(ctx)
	cpu, start := startCPU(), time.Now()
	for range workers {
		g.Go(func() error {
			for {
				got, err := claimBatch(gctx)
				if err != nil {
					return fmt.Errorf("claim and mark done: %w", err)
				}
				if got == 0 {
					return nil
				}
			}
		})
	}
	if err := g.Wait(); err != nil {
		return Result{}, err
	}
	elapsed := time.Since(start)
	cpuUse := cpu.stop(n)
	var done int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+q+".inbox_messages WHERE state = 'done'").Scan(&done); err != nil {
		return Result{}, fmt.Errorf("count done: %w", err)
	}
	if done != n {
		return Result{}, fmt.Errorf("%d of %d rows done", done, n)
	}
	return Result{
		Messages: n,
		Seconds:  elapsed.Seconds(),
		Rate:     float64(n) / elapsed.Seconds(),
		CPU:      cpuUse,
		Settings: fmt.Sprintf("%d connections, claim %d (FOR UPDATE SKIP LOCKED) + one UPDATE + commit per transaction", workers, batch),
	}, nil
}
