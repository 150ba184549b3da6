package inbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/inboxkit/inbox/internal/sqlident"
)

// ErrNotMigrated is returned by CheckSchema when the schema lacks the
// inbox tables.
var ErrNotMigrated = errors.New("inbox: schema not migrated")

// ErrStatsNotMigrated is returned by Stats when the schema lacks the
// indexes of migration 2, without which its queries would scan the table.
var ErrStatsNotMigrated = errors.New("inbox: stats need migration 2 (run migrations.Up or inboxctl migrate up)")

// rowQuerier reads one row, on a pool, connection or transaction.
type rowQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// CheckSchema returns an error wrapping ErrNotMigrated if schema has no
// inbox tables (see package migrations). Start runs it; tools may too,
// before they act on a schema.
func CheckSchema(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	ok, err := exist(ctx, pool, schema, "inbox_messages", "inbox_streams")
	if err != nil {
		return fmt.Errorf("inbox: check schema %s: %w", schema, err)
	}
	if !ok {
		return fmt.Errorf("%w: schema %s has no inbox tables: run migrations.Up first", ErrNotMigrated, schema)
	}
	return nil
}

// checkStatsIndexes returns ErrStatsNotMigrated if schema lacks the
// indexes Stats reads.
func checkStatsIndexes(ctx context.Context, db rowQuerier, schema string) error {
	ok, err := exist(ctx, db, schema, "inbox_messages_topic_pending", "inbox_messages_topic_finished")
	if err != nil {
		return fmt.Errorf("inbox: stats: look up indexes: %w", err)
	}
	if !ok {
		return fmt.Errorf("%w (schema %s)", ErrStatsNotMigrated, schema)
	}
	return nil
}

func exist(ctx context.Context, db rowQuerier, schema, a, b string) (bool, error) {
	q := sqlident.Quote(schema) + "."
	var ok bool
	err := db.QueryRow(ctx, sqlBothExist, q+a, q+b).Scan(&ok)
	return ok, err
}
