// Package migrations holds the inbox schema as numbered, embedded SQL files
// and applies them.
//
// Up and Down run in one transaction under a transaction-level advisory lock
// keyed by the schema name, so several service instances may call Up at the
// same time on start-up: one applies, the others wait and then find nothing
// to do. Applied versions are recorded in {schema}.inbox_migrations.
package migrations

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/inboxkit/inbox/internal/sqlident"
)

//go:embed *.sql
var files embed.FS

// DB is what migrations need from a *pgxpool.Pool or *pgx.Conn.
type DB interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Migration is one numbered schema change.
type Migration struct {
	Version int
	Name    string
	up      string
	down    string
}

// Status is a migration and whether it is applied.
type Status struct {
	Version   int
	Name      string
	Applied   bool
	AppliedAt time.Time
}

var fileName = regexp.MustCompile(`^(\d+)_([a-z0-9_]+)\.(up|down)\.sql$`)

// All returns the embedded migrations in version order.
func All() ([]Migration, error) {
	entries, err := fs.ReadDir(files, ".")
	if err != nil {
		return nil, fmt.Errorf("read embedded migrations: %w", err)
	}
	byVersion := map[int]*Migration{}
	for _, e := range entries {
		m := fileName.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("embedded migration %q: name must be NNN_name.up.sql or NNN_name.down.sql", e.Name())
		}
		version, _ := strconv.Atoi(m[1])
		text, err := fs.ReadFile(files, e.Name())
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", e.Name(), err)
		}
		mig := byVersion[version]
		if mig == nil {
			mig = &Migration{Version: version, Name: m[2]}
			byVersion[version] = mig
		}
		if m[3] == "up" {
			mig.up = string(text)
		} else {
			mig.down = string(text)
		}
	}
	out := make([]Migration, 0, len(byVersion))
	for _, m := range byVersion {
		if m.up == "" || m.down == "" {
			return nil, fmt.Errorf("migration %d_%s needs both an up and a down file", m.Version, m.Name)
		}
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// Latest is the highest embedded version.
func Latest() int {
	all, err := All()
	if err != nil || len(all) == 0 {
		return 0
	}
	return all[len(all)-1].Version
}

// Up creates schema if needed and applies every migration not yet applied.
// It returns the versions it applied.
func Up(ctx context.Context, db DB, schema string) ([]int, error) {
	all, err := All()
	if err != nil {
		return nil, err
	}
	var applied []int
	err = locked(ctx, db, schema, func(tx pgx.Tx, q string, done map[int]time.Time) error {
		for _, m := range all {
			if _, ok := done[m.Version]; ok {
				continue
			}
			if _, err := tx.Exec(ctx, render(m.up, q)); err != nil {
				return fmt.Errorf("apply migration %d_%s: %w", m.Version, m.Name, err)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO "+q+".inbox_migrations (version, name) VALUES ($1, $2)", m.Version, m.Name); err != nil {
				return fmt.Errorf("record migration %d: %w", m.Version, err)
			}
			applied = append(applied, m.Version)
		}
		return nil
	})
	return applied, err
}

// Down reverts applied migrations above version target, newest first
// (target 0 removes the inbox tables). It returns the versions it reverted.
func Down(ctx context.Context, db DB, schema string, target int) ([]int, error) {
	if target < 0 {
		return nil, fmt.Errorf("migrate down: target version %d is negative", target)
	}
	all, err := All()
	if err != nil {
		return nil, err
	}
	var reverted []int
	err = locked(ctx, db, schema, func(tx pgx.Tx, q string, done map[int]time.Time) error {
		for i := len(all) - 1; i >= 0; i-- {
			m := all[i]
			if _, ok := done[m.Version]; !ok || m.Version <= target {
				continue
			}
			if _, err := tx.Exec(ctx, render(m.down, q)); err != nil {
				return fmt.Errorf("revert migration %d_%s: %w", m.Version, m.Name, err)
			}
			if _, err := tx.Exec(ctx, "DELETE FROM "+q+".inbox_migrations WHERE version = $1", m.Version); err != nil {
				return fmt.Errorf("unrecord migration %d: %w", m.Version, err)
			}
			reverted = append(reverted, m.Version)
		}
		return nil
	})
	return reverted, err
}

// List reports every embedded migration and whether it is applied in schema.
func List(ctx context.Context, db DB, schema string) ([]Status, error) {
	all, err := All()
	if err != nil {
		return nil, err
	}
	var out []Status
	err = locked(ctx, db, schema, func(_ pgx.Tx, _ string, done map[int]time.Time) error {
		for _, m := range all {
			at, ok := done[m.Version]
			out = append(out, Status{Version: m.Version, Name: m.Name, Applied: ok, AppliedAt: at})
		}
		return nil
	})
	return out, err
}

// locked runs fn in a transaction that holds the schema's migration lock,
// with the schema and version table created and the applied versions read.
func locked(ctx context.Context, db DB, schema string, fn func(tx pgx.Tx, quotedSchema string, applied map[int]time.Time) error) (err error) {
	if err := sqlident.Validate(schema); err != nil {
		return fmt.Errorf("migrations: schema: %w", err)
	}
	q := sqlident.Quote(schema)
	tx, err := db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("migrations: begin: %w", err)
	}
	defer func() {
		if err != nil {
			rollback(tx)
		}
	}()
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext($1))", "inbox-migrate:"+schema); err != nil {
		return fmt.Errorf("migrations: take lock: %w", err)
	}
	if err := ensureVersionTable(ctx, tx, schema, q); err != nil {
		return err
	}
	rows, err := tx.Query(ctx, "SELECT version, applied_at FROM "+q+".inbox_migrations")
	if err != nil {
		return fmt.Errorf("migrations: read applied versions: %w", err)
	}
	applied := map[int]time.Time{}
	var v int
	var at time.Time
	if _, err := pgx.ForEachRow(rows, []any{&v, &at}, func() error { applied[v] = at; return nil }); err != nil {
		return fmt.Errorf("migrations: read applied versions: %w", err)
	}
	if err := fn(tx, q, applied); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("migrations: commit: %w", err)
	}
	return nil
}

func ensureVersionTable(ctx context.Context, tx pgx.Tx, schema, q string) error {
	// CREATE SCHEMA IF NOT EXISTS still needs CREATE privilege on the
	// database, so skip it when the schema is already there.
	var exists bool
	if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema).Scan(&exists); err != nil {
		return fmt.Errorf("migrations: look up schema: %w", err)
	}
	if !exists {
		if _, err := tx.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+q); err != nil {
			return fmt.Errorf("migrations: create schema %s: %w", schema, err)
		}
	}
	_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+q+`.inbox_migrations (
		version    integer     PRIMARY KEY,
		name       text        NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`)
	if err != nil {
		return fmt.Errorf("migrations: create version table: %w", err)
	}
	return nil
}

func render(sql, quotedSchema string) string {
	return strings.ReplaceAll(sql, "{schema}", quotedSchema)
}

func rollback(tx pgx.Tx) {
	// The caller's context may be what failed; roll back on a fresh one.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// An error here means the connection is gone, and the server rolls the
	// transaction back by itself.
	_ = tx.Rollback(ctx)
}
