package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/inboxkit/inbox/migrations"
)

func (a *app) migrate(ctx context.Context, sub string, args []string) error {
	fs := a.newFlagSet("migrate up|down|status")
	to := fs.Int("to", -1, "down: revert every migration above this version (default: only the latest)")
	yes := fs.Bool("yes", false, "down: confirm reverting migration 1, which drops the inbox tables and their messages")
	rest, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("migrate %s: unexpected argument %q", sub, rest[0])
	}
	switch sub {
	case "up", "down", "status":
	case "":
		return usagef("migrate needs up, down or status")
	default:
		return usagef("migrate: unknown subcommand %q (want up, down or status)", sub)
	}
	if err := a.connect(ctx, false); err != nil {
		return err
	}
	switch sub {
	case "up":
		return a.migrateUp(ctx)
	case "down":
		return a.migrateDown(ctx, *to, *yes)
	}
	return a.migrateStatus(ctx)
}

func (a *app) migrateUp(ctx context.Context) error {
	var applied []int
	err := a.withTimeout(ctx, func(ctx context.Context) error {
		var err error
		applied, err = migrations.Up(ctx, a.pool, a.opts.schema)
		return err
	})
	if err != nil {
		return fmt.Errorf("migrate up: %w", err)
	}
	if a.opts.json {
		return a.printJSON(map[string]any{"schema": a.opts.schema, "applied": nonNil(applied), "version": migrations.Latest()})
	}
	if len(applied) == 0 {
		fmt.Fprintf(a.stdout, "schema %s is up to date (version %d)\n", a.opts.schema, migrations.Latest())
		return nil
	}
	for _, v := range applied {
		fmt.Fprintf(a.stdout, "applied migration %d\n", v)
	}
	fmt.Fprintf(a.stdout, "schema %s is at version %d\n", a.opts.schema, migrations.Latest())
	return nil
}

func (a *app) migrateDown(ctx context.Context, to int, yes bool) error {
	status, err := a.migrationStatus(ctx)
	if err != nil {
		return err
	}
	current := 0
	for _, s := range status {
		if s.Applied {
			current = s.Version
		}
	}
	if current == 0 {
		return fmt.Errorf("migrate down: schema %s has no migration applied", a.opts.schema)
	}
	target := to
	if target < 0 {
		target = current - 1
	}
	if target >= current {
		return usagef("migrate down: --to %d is not below the current version %d", target, current)
	}
	if target < 1 && !yes {
		return usagef("migrate down to version %d drops the inbox tables and every message in them; add --yes to do it", target)
	}
	var reverted []int
	err = a.withTimeout(ctx, func(ctx context.Context) error {
		var err error
		reverted, err = migrations.Down(ctx, a.pool, a.opts.schema, target)
		return err
	})
	if err != nil {
		return fmt.Errorf("migrate down: %w", err)
	}
	if a.opts.json {
		return a.printJSON(map[string]any{"schema": a.opts.schema, "reverted": nonNil(reverted), "version": target})
	}
	for _, v := range reverted {
		fmt.Fprintf(a.stdout, "reverted migration %d\n", v)
	}
	fmt.Fprintf(a.stdout, "schema %s is at version %d\n", a.opts.schema, target)
	return nil
}

// migrationStatus lists the migrations. A schema that does not exist has
// none applied; it is not created (migrations.List would create it).
func (a *app) migrationStatus(ctx context.Context) ([]migrations.Status, error) {
	var exists bool
	var status []migrations.Status
	err := a.withTimeout(ctx, func(ctx context.Context) error {
		if err := a.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, a.opts.schema).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			return nil
		}
		var err error
		status, err = migrations.List(ctx, a.pool, a.opts.schema)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read migration status: %w", err)
	}
	if !exists {
		all, err := migrations.All()
		if err != nil {
			return nil, err
		}
		for _, m := range all {
			status = append(status, migrations.Status{Version: m.Version, Name: m.Name})
		}
	}
	return status, nil
}

type migrationJSON struct {
	Version   int        `json:"version"`
	Name      string     `json:"name"`
	Applied   bool       `json:"applied"`
	AppliedAt *time.Time `json:"applied_at,omitempty"`
}

func (a *app) migrateStatus(ctx context.Context) error {
	status, err := a.migrationStatus(ctx)
	if err != nil {
		return err
	}
	if a.opts.json {
		out := make([]migrationJSON, 0, len(status))
		for _, s := range status {
			m := migrationJSON{Version: s.Version, Name: s.Name, Applied: s.Applied}
			if s.Applied {
				at := s.AppliedAt.UTC()
				m.AppliedAt = &at
			}
			out = append(out, m)
		}
		return a.printJSON(out)
	}
	t := newTable(a.stdout, "VERSION", "NAME", "APPLIED")
	for _, s := range status {
		applied := "no"
		if s.Applied {
			applied = timestamp(s.AppliedAt)
		}
		t.row(strconv.Itoa(s.Version), s.Name, applied)
	}
	return t.flush()
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
