// Package testenv gives this module's tests a PostgreSQL pool on a fresh,
// uniquely named schema, on the services internal/devenv names.
package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/inboxkit/inbox/internal/devenv"
	"github.com/inboxkit/inbox/internal/sqlident"
)

// The services and names of internal/devenv, for tests.
var (
	PostgresURL = devenv.PostgresURL
	AMQPURL     = devenv.AMQPURL
	UniqueName  = devenv.UniqueName
)

// Schema creates and migrates a unique schema, dropped when the test ends,
// and returns a pool of maxConns connections whose application_name is the
// schema's name (so a test can find and kill its backends).
func Schema(t testing.TB, maxConns int32) (*pgxpool.Pool, string) {
	t.Helper()
	name := devenv.UniqueName("t")
	pool := Pool(t, name, maxConns)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	schema, drop, err := devenv.NewSchema(ctx, pool, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := drop(); err != nil {
			t.Log(err)
		}
	})
	return pool, schema
}

// Pool opens a pool with the given application_name, closed when the test
// ends.
func Pool(t testing.TB, appName string, maxConns int32) *pgxpool.Pool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := devenv.OpenPool(ctx, devenv.PostgresURL(), appName, maxConns, nil)
	if err != nil {
		t.Fatalf("%s: %v", devenv.PostgresURLEnv, err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// Database is Schema in a database of its own, dropped when the test ends,
// for a test that must not see the other tests' DDL: a new schema anywhere
// in a database makes every backend of that database replan its cached
// statements.
func Database(t testing.TB, maxConns int32) (*pgxpool.Pool, string) {
	t.Helper()
	name := devenv.UniqueName("t")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin := Pool(t, name, 1)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+sqlident.Quote(name)); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+sqlident.Quote(name)+" WITH (FORCE)"); err != nil {
			t.Logf("drop database %s: %v", name, err)
		}
	})
	pool, err := devenv.OpenPool(ctx, devenv.PostgresURL(), name, maxConns, func(c *pgxpool.Config) { c.ConnConfig.Database = name })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	schema, _, err := devenv.NewSchema(ctx, pool, name)
	if err != nil {
		t.Fatal(err)
	}
	return pool, schema
}
