// Package testenv gives this module's tests a PostgreSQL pool on a fresh,
// uniquely named schema, and the RabbitMQ URL, from INBOX_POSTGRES_URL and
// INBOX_AMQP_URL (defaulting to the local services).
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/inboxkit/inbox/internal/sqlident"
	"github.com/inboxkit/inbox/migrations"
)

// Default URLs of the services on a development machine.
const (
	DefaultPostgresURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	DefaultAMQPURL     = "amqp://guest:guest@127.0.0.1:5672/"
)

// PostgresURL is the database the tests use.
func PostgresURL() string {
	if u := os.Getenv("INBOX_POSTGRES_URL"); u != "" {
		return u
	}
	return DefaultPostgresURL
}

// AMQPURL is the broker the tests use.
func AMQPURL() string {
	if u := os.Getenv("INBOX_AMQP_URL"); u != "" {
		return u
	}
	return DefaultAMQPURL
}

// UniqueName returns prefix followed by random hex, a valid identifier.
func UniqueName(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return strings.ToLower(prefix) + "_" + hex.EncodeToString(b)
}

// Schema creates and migrates a unique schema, dropped when the test ends,
// and returns a pool of maxConns connections whose application_name is the
// schema's name (so a test can find and kill its backends).
func Schema(t testing.TB, maxConns int32) (*pgxpool.Pool, string) {
	t.Helper()
	schema := UniqueName("t")
	pool := Pool(t, schema, maxConns)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := migrations.Up(ctx, pool, schema); err != nil {
		t.Fatalf("migrate %s: %v", schema, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		admin, err := pgxpool.New(ctx, PostgresURL())
		if err != nil {
			t.Logf("drop schema %s: %v", schema, err)
			return
		}
		defer admin.Close()
		if _, err := admin.Exec(ctx, "DROP SCHEMA IF EXISTS "+sqlident.Quote(schema)+" CASCADE"); err != nil {
			t.Logf("drop schema %s: %v", schema, err)
		}
	})
	return pool, schema
}

// Pool opens a pool with the given application_name, closed when the test
// ends.
func Pool(t testing.TB, appName string, maxConns int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(PostgresURL())
	if err != nil {
		t.Fatalf("parse INBOX_POSTGRES_URL: %v", err)
	}
	cfg.MaxConns = maxConns
	cfg.ConnConfig.RuntimeParams["application_name"] = appName
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect to PostgreSQL: %v", err)
	}
	if err := pool.Ping(ctx); err != nil {
		t.Fatalf("PostgreSQL at INBOX_POSTGRES_URL does not answer: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}
