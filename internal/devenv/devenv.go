// Package devenv names the PostgreSQL and RabbitMQ that this repository's
// tests, examples, benchmarks and inboxctl use: those the environment names
// (INBOX_POSTGRES_URL, INBOX_AMQP_URL), else the local services of a
// development machine. It also opens pools on them and makes the unique,
// migrated schemas that tests and benchmarks work in. It is the one source
// of these defaults; internal/testenv, the inboxtest module and the bench
// module build on it.
package devenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/inboxkit/inbox/internal/sqlident"
	"github.com/inboxkit/inbox/migrations"
)

// Environment variables naming the services.
const (
	PostgresURLEnv = "INBOX_POSTGRES_URL"
	AMQPURLEnv     = "INBOX_AMQP_URL"
)

// Default URLs of the services on a development machine.
const (
	DefaultPostgresURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	DefaultAMQPURL     = "amqp://guest:guest@127.0.0.1:5672/"
)

// PostgresURL is $INBOX_POSTGRES_URL, else DefaultPostgresURL.
func PostgresURL() string { return envOr(PostgresURLEnv, DefaultPostgresURL) }

// AMQPURL is $INBOX_AMQP_URL, else DefaultAMQPURL.
func AMQPURL() string { return envOr(AMQPURLEnv, DefaultAMQPURL) }

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// UniqueName returns prefix (lower-cased), an underscore and 12 random hex
// digits: a valid SQL identifier (for a valid prefix) and queue name that
// no concurrent test or run shares.
func UniqueName(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return strings.ToLower(prefix) + "_" + hex.EncodeToString(b)
}

// OpenPool opens a pool of maxConns connections on url whose
// application_name is appName (so a stray backend is easy to attribute, or
// to kill), after configure (if not nil) has adjusted its configuration,
// and checks that the database answers.
func OpenPool(ctx context.Context, url, appName string, maxConns int32, configure func(*pgxpool.Config)) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse PostgreSQL URL: %w", err)
	}
	cfg.MaxConns = maxConns
	cfg.ConnConfig.RuntimeParams["application_name"] = appName
	if configure != nil {
		configure(cfg)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("PostgreSQL does not answer: %w", err)
	}
	return pool, nil
}

// NewSchema creates the schema name (make it with UniqueName) in pool's
// database and migrates it. drop removes it, with everything in it, on a
// connection of its own and a bounded context of its own, so it works
// after pool is closed and after ctx is done.
func NewSchema(ctx context.Context, pool *pgxpool.Pool, name string) (schema string, drop func() error, err error) {
	schema = name
	if _, err := migrations.Up(ctx, pool, schema); err != nil {
		return "", nil, fmt.Errorf("migrate schema %s: %w", schema, err)
	}
	connCfg := pool.Config().ConnConfig.Copy()
	drop = func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := pgx.ConnectConfig(ctx, connCfg)
		if err != nil {
			return fmt.Errorf("drop schema %s: %w", schema, err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+sqlident.Quote(schema)+" CASCADE"); err != nil {
			return fmt.Errorf("drop schema %s: %w", schema, err)
		}
		return nil
	}
	return schema, drop, nil
}
