package main

import (
	"context"
	"fmt"

	"github.com/inboxkit/inbox"
)

// inboxConfig is the inbox's tuning in every processing case: the same
// for unordered, ordered and scale, so their ratios compare like with like.
func (b *bench) inboxConfig() inbox.Config {
	return inbox.Config{Workers: b.opts.InboxWorkers, BatchSize: b.opts.InboxBatch}
}

// processing alternates inbox, River and database-ceiling rounds, so load
// from elsewhere on the machine falls on all alike.
func (b *bench) processing(ctx context.Context) error {
	s := defaultRiverSettings
	s.MaxWorkers = b.opts.RiverWorkers
	batch := b.opts.InboxBatch
	if batch == 0 {
		batch = inbox.DefaultBatchSize
	}
	var inboxRounds, emitRounds, riverRounds, dbRounds []Result
	for range b.opts.Rounds {
		res, err := runInboxProcessing(ctx, inboxRun{
			name: "processing", messages: b.opts.Messages, bodySize: b.opts.Body, cfg: b.inboxConfig(),
		})
		if err != nil {
			return err
		}
		inboxRounds = append(inboxRounds, res...)
		if res, err = runInboxProcessing(ctx, inboxRun{
			name: "processing emit", messages: b.opts.Messages, bodySize: b.opts.Body, cfg: b.inboxConfig(), emit: true,
		}); err != nil {
			return err
		}
		emitRounds = append(emitRounds, res...)
		r, err := runRiver(ctx, b.opts.Messages, b.opts.Body, s)
		if err != nil {
			return err
		}
		riverRounds = append(riverRounds, r)
		if r, err = runDBProcessingCeiling(ctx, b.opts.Messages, b.opts.Body, b.opts.InboxWorkers, batch); err != nil {
			return fmt.Errorf("database processing ceiling: %w", err)
		}
		dbRounds = append(dbRounds, r)
	}
	b.record(resultProcessingInbox, "Processing: inbox, unordered, no-op handler", best(inboxRounds))
	b.record(resultProcessingEmit, "Processing: inbox, handler enqueues a follow-up", best(emitRounds))
	b.record(resultProcessingRiver, "Processing: River, no-op worker", best(riverRounds))
	b.record(resultDBProcessing, "Database processing ceiling: claim and mark done in SQL", best(dbRounds))
	return nil
}

func (b *bench) ordered(ctx context.Context) error {
	var rounds []Result
	for range b.opts.Rounds {
		res, err := runInboxProcessing(ctx, inboxRun{
			name: "ordered", messages: b.opts.Messages, bodySize: b.opts.Body, streams: benchStreams, cfg: b.inboxConfig(),
		})
		if err != nil {
			return err
		}
		rounds = append(rounds, res...)
	}
	b.record(resultOrderedInbox, fmt.Sprintf("Ordered: inbox, %s streams", thousands(benchStreams)), best(rounds))
	return nil
}

// scale loads the big backlog once and works it for several rounds of
// -messages each: every round starts with nearly all of it still pending.
func (b *bench) scale(ctx context.Context) error {
	rounds, err := runInboxProcessing(ctx, inboxRun{
		name: "scale", messages: b.opts.Messages, pending: b.opts.ScaleRows, rounds: b.opts.Rounds,
		bodySize: b.opts.Body, cfg: b.inboxConfig(),
	})
	if err != nil {
		return err
	}
	b.record(resultScaleInbox, fmt.Sprintf("Scale: inbox with %s pending", thousands(float64(b.opts.ScaleRows))), best(rounds))
	return nil
}
