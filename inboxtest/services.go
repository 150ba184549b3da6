package inboxtest

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	tcrabbitmq "github.com/testcontainers/testcontainers-go/modules/rabbitmq"

	"github.com/inboxkit/inbox/internal/devenv"
)

// Environment variables naming the services. When set, no container is
// started.
const (
	PostgresURLEnv = devenv.PostgresURLEnv
	AMQPURLEnv     = devenv.AMQPURLEnv
)

// Images of the containers started when the environment names no service.
// Change them before the first call to Postgres or RabbitMQ.
var (
	PostgresImage = "postgres:16-alpine"
	RabbitMQImage = "rabbitmq:3.13-management-alpine"
)

// startTimeout bounds pulling and starting one container.
const startTimeout = 5 * time.Minute

// service is one container shared by the tests of a binary: started by the
// first test that asks for it, kept until the binary exits.
type service struct {
	once      sync.Once
	url       string
	err       error
	container testcontainers.Container
}

var (
	postgresService service
	rabbitService   service
)

// Postgres returns the URL of a PostgreSQL database for tests: the value of
// INBOX_POSTGRES_URL if set, else that of a container started once per test
// binary. It fails the test when neither is available.
func Postgres(t testing.TB) string {
	t.Helper()
	if u := os.Getenv(PostgresURLEnv); u != "" {
		return u
	}
	return postgresService.get(t, "PostgreSQL", PostgresURLEnv, startPostgres)
}

// RabbitMQ returns the AMQP URL of a RabbitMQ broker for tests: the value of
// INBOX_AMQP_URL if set, else that of a container started once per test
// binary. It fails the test when neither is available.
func RabbitMQ(t testing.TB) string {
	t.Helper()
	if u := os.Getenv(AMQPURLEnv); u != "" {
		return u
	}
	return rabbitService.get(t, "RabbitMQ", AMQPURLEnv, startRabbitMQ)
}

func (s *service) get(t testing.TB, name, env string, start func(context.Context) (testcontainers.Container, string, error)) string {
	t.Helper()
	s.once.Do(func() {
		// Not the test's context: the container outlives the first test.
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		s.container, s.url, s.err = startGuarded(ctx, start)
	})
	if s.err != nil {
		t.Fatalf("inboxtest: %s: %s is not set and no container could be started (a Docker engine is needed for that): %v", name, env, s.err)
	}
	return s.url
}

// startGuarded turns a panic of the container library (some versions panic
// when no Docker host is found) into an error the test can report.
func startGuarded(ctx context.Context, start func(context.Context) (testcontainers.Container, string, error)) (c testcontainers.Container, url string, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("start container: %v", r)
		}
	}()
	return start(ctx)
}

func startPostgres(ctx context.Context) (testcontainers.Container, string, error) {
	c, err := tcpostgres.Run(ctx, PostgresImage,
		tcpostgres.WithDatabase("inbox_test"),
		tcpostgres.WithUsername("inbox"),
		tcpostgres.WithPassword("inbox"),
		tcpostgres.BasicWaitStrategies(),
	)
	if err != nil {
		terminate(c)
		return nil, "", fmt.Errorf("start %s: %w", PostgresImage, err)
	}
	url, err := c.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		terminate(c)
		return nil, "", fmt.Errorf("connection string of %s: %w", PostgresImage, err)
	}
	return c, url, nil
}

func startRabbitMQ(ctx context.Context) (testcontainers.Container, string, error) {
	c, err := tcrabbitmq.Run(ctx, RabbitMQImage)
	if err != nil {
		terminate(c)
		return nil, "", fmt.Errorf("start %s: %w", RabbitMQImage, err)
	}
	url, err := c.AmqpURL(ctx)
	if err != nil {
		terminate(c)
		return nil, "", fmt.Errorf("AMQP URL of %s: %w", RabbitMQImage, err)
	}
	return c, url + "/", nil
}

// terminate stops a container; a nil one (a failed Run may return one) is
// ignored. Its error is ignored too: the reaper, or the engine's own
// cleanup, is the backstop.
func terminate(c testcontainers.Container) {
	_ = testcontainers.TerminateContainer(c, testcontainers.StopTimeout(30*time.Second))
}

// Main runs the tests and then stops the containers this package started.
// Call it from TestMain where testcontainers' reaper is disabled
// (TESTCONTAINERS_RYUK_DISABLED=true); elsewhere the reaper removes them
// when the binary exits, and TestMain is not needed:
//
//	func TestMain(m *testing.M) { inboxtest.Main(m) }
func Main(m *testing.M) {
	code := m.Run()
	for _, s := range []*service{&postgresService, &rabbitService} {
		if s.container != nil {
			terminate(s.container)
		}
	}
	os.Exit(code)
}
