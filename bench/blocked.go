package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/inboxkit/inbox"
)

// unhandledTopic is the topic of blocked rows that no handler takes.
const unhandledTopic = "bench_unhandled"

// blocked measures processing beside rows that cannot run (a parked stream
// and a topic without a handler) against the same load without them, in
// alternating rounds, both with their claims timed.
func (b *bench) blocked(ctx context.Context) error {
	run := inboxRun{messages: b.opts.Messages, rounds: b.opts.Rounds, bodySize: b.opts.Body, cfg: b.inboxConfig()}
	cleanRun, blockedRun := run, run
	cleanRun.name, blockedRun.name, blockedRun.blocked = "clean", "blocked", b.opts.BlockedRows
	clean, err := prepareInbox(ctx, cleanRun)
	if err != nil {
		return err
	}
	defer clean.close()
	blocked, err := prepareInbox(ctx, blockedRun)
	if err != nil {
		return err
	}
	defer blocked.close()
	var cleanRounds, blockedRounds []Result
	for range b.opts.Rounds {
		res, err := clean.round(ctx)
		if err != nil {
			return err
		}
		cleanRounds = append(cleanRounds, res)
		if res, err = blocked.round(ctx); err != nil {
			return err
		}
		blockedRounds = append(blockedRounds, res)
	}
	b.record(resultBlockedClean, "Blocked rows: inbox, none (clean)", best(cleanRounds))
	b.record(resultBlockedInbox, fmt.Sprintf("Blocked rows: inbox beside %s blocked", thousands(float64(b.opts.BlockedRows))), best(blockedRounds))
	return nil
}

// loadBlocked loads n rows that no worker can run: n/2 pending rows of a
// topic with no handler, and a stream of n-n/2 pending rows (of the handled
// topic) behind a dead head that parked it. The stream is parked by the
// library itself, by a handler that fails its head with MaxAttempts 1, so
// the stream's state is whatever the library keeps for a parked stream.
func loadBlocked(ctx context.Context, pool *pgxpool.Pool, schema string, n, bodySize int) error {
	if n == 0 {
		return nil
	}
	if err := loadRows(ctx, pool, schema, rows{n: n / 2, prefix: "u", topic: unhandledTopic}, bodySize); err != nil {
		return err
	}
	// One more than the share: the head goes dead.
	parked := rows{n: n - n/2 + 1, prefix: "p", topic: benchTopic, streams: 1, streamPrefix: "parked"}
	if err := loadRows(ctx, pool, schema, parked, bodySize); err != nil {
		return err
	}
	return parkStreams(ctx, pool, schema)
}

// parkStreams runs an Inbox whose handler fails every message of the
// benchmark's topic, with one attempt allowed, until a stream is parked.
// Call it before the runnable load is there: it would kill that too.
func parkStreams(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	in, err := inbox.New(pool, inbox.Config{Schema: schema, Workers: 1, MaxAttempts: 1,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	in.Handle(benchTopic, func(context.Context, pgx.Tx, *inbox.Message) error {
		return errors.New("bench: fail the head so the stream parks")
	})
	if err := in.Start(ctx); err != nil {
		return fmt.Errorf("start the parking inbox: %w", err)
	}
	var listErr error
	waitErr := pollUntil(ctx, time.Minute, 10*time.Millisecond, func() bool {
		var s []inbox.StreamInfo
		s, listErr = in.ListStreams(ctx, inbox.StreamFilter{Parked: true})
		return listErr != nil || len(s) > 0
	})
	stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stopErr := in.Stop(stopCtx)
	if err := errors.Join(listErr, waitErr, stopErr); err != nil {
		return fmt.Errorf("park the blocked stream in %s: %w", schema, err)
	}
	return nil
}
