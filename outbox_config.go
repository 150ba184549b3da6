package inbox

import (
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"

	"github.com/inboxkit/inbox/internal/sqlident"
)

// Defaults of OutboxConfig fields left zero.
const (
	DefaultOutboxMaxHeaderBytes = 64 << 10
	DefaultOutboxMaxAttempts    = 10
	DefaultOutboxRetryInitial   = time.Second
	DefaultOutboxRetryMax       = 5 * time.Minute
	DefaultOutboxRetention      = 24 * time.Hour
)

// MaxShortStringBytes bounds the AMQP short strings of an outgoing message
// (type, exchange, routing key, content type): the wire format allows 255.
const MaxShortStringBytes = 255

// Route is where an outgoing message is published: an exchange ("" for the
// default exchange, which routes to the queue named by the routing key) and
// a routing key.
type Route struct {
	Exchange   string
	RoutingKey string
}

// OutboxConfig tunes an Outbox. The zero value is usable.
type OutboxConfig struct {
	// Schema holds the outbox tables (see package migrations). Defaults to
	// DefaultSchema.
	Schema string
	// Destinations names routes, so that code enqueues to "shipments"
	// rather than to an exchange and routing key. A name is resolved at
	// Enqueue; an unknown one is refused there.
	Destinations map[string]Route
	// MaxBodyBytes refuses larger bodies at Enqueue. Defaults to
	// DefaultMaxBodyBytes.
	MaxBodyBytes int
	// MaxHeaderBytes bounds the headers of one message (names and values).
	// Defaults to DefaultOutboxMaxHeaderBytes.
	MaxHeaderBytes int
	// MaxAttempts is how many times a relay tries a message the broker
	// refuses (nack, missing exchange) before it is dead. Defaults to
	// DefaultOutboxMaxAttempts.
	MaxAttempts int
	// RetryInitial, RetryMax and RetryJitter shape the backoff between those
	// attempts. Default to DefaultOutboxRetryInitial, DefaultOutboxRetryMax
	// and DefaultRetryJitter; exact delays take NoJitter, as in Config.
	RetryInitial time.Duration
	RetryMax     time.Duration
	RetryJitter  float64
	// Retention is how long sent messages are kept (without their body)
	// before a relay deletes them; an ID enqueued again within it is a
	// duplicate. Defaults to DefaultOutboxRetention.
	Retention time.Duration
	// CleanupBatch bounds one delete of expired sent rows. Defaults to
	// DefaultCleanupBatch.
	CleanupBatch int
	// DisableListen makes Enqueue send no NOTIFY: relays then find new
	// messages by polling (Send still wakes a relay of this process, after
	// its commit). PostgreSQL serialises the commits of notifying
	// transactions server-wide, through their WAL flush, so services that
	// enqueue in many small transactions (hundreds per second) go faster
	// without it (docs/outbox.md).
	DisableListen bool
	// Logger receives the outbox's logs. Defaults to slog.Default().
	Logger *slog.Logger
	// MeterProvider receives the outbox's metrics (the MetricOutbox
	// constants). Defaults to the global one.
	MeterProvider metric.MeterProvider
}

func (c OutboxConfig) withDefaults() OutboxConfig {
	setDefault(&c.Schema, DefaultSchema)
	setDefault(&c.MaxBodyBytes, DefaultMaxBodyBytes)
	setDefault(&c.MaxHeaderBytes, DefaultOutboxMaxHeaderBytes)
	setDefault(&c.MaxAttempts, DefaultOutboxMaxAttempts)
	setDefault(&c.RetryInitial, DefaultOutboxRetryInitial)
	setDefault(&c.RetryMax, DefaultOutboxRetryMax)
	setDefault(&c.RetryJitter, DefaultRetryJitter)
	setDefault(&c.Retention, DefaultOutboxRetention)
	setDefault(&c.CleanupBatch, DefaultCleanupBatch)
	if c.RetryJitter < 0 {
		c.RetryJitter = 0
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.MeterProvider == nil {
		c.MeterProvider = otel.GetMeterProvider()
	}
	return c
}

func (c OutboxConfig) validate() error {
	if err := sqlident.Validate(c.Schema); err != nil {
		return fmt.Errorf("inbox: OutboxConfig.Schema: %w", err)
	}
	if err := requirePositive("OutboxConfig", []positiveField{
		{"MaxBodyBytes", c.MaxBodyBytes > 0},
		{"MaxHeaderBytes", c.MaxHeaderBytes > 0},
		{"MaxAttempts", c.MaxAttempts > 0},
		{"RetryInitial", c.RetryInitial > 0},
		{"RetryMax", c.RetryMax >= c.RetryInitial},
		{"Retention", c.Retention > 0},
		{"CleanupBatch", c.CleanupBatch > 0},
	}); err != nil {
		return err
	}
	if c.RetryJitter > 1 {
		return fmt.Errorf("inbox: OutboxConfig.RetryJitter %v must be at most 1", c.RetryJitter)
	}
	for name, r := range c.Destinations {
		if name == "" || len(name) > MaxShortStringBytes || len(r.Exchange) > MaxShortStringBytes || len(r.RoutingKey) > MaxShortStringBytes {
			return fmt.Errorf("inbox: OutboxConfig.Destinations[%q]: names, exchanges and routing keys are 1 to %d bytes", name, MaxShortStringBytes)
		}
	}
	return nil
}

// retryDelay is the wait before attempt+1 of a refused publish.
func (c OutboxConfig) retryDelay(attempt int) time.Duration {
	return Config{RetryInitial: c.RetryInitial, RetryMax: c.RetryMax, RetryJitter: c.RetryJitter}.retryDelay(attempt)
}
