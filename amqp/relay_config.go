package amqp

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Defaults of RelayConfig fields left zero.
const (
	DefaultRelayBatchSize       = 100
	DefaultRelayPollInterval    = time.Second
	DefaultConfirmTimeout       = 30 * time.Second
	DefaultRelayCleanupInterval = time.Minute
)

// RelayConfig tunes a Relay. URL is required; every other field has a
// default.
type RelayConfig struct {
	// URL is the broker's AMQP URI. Logs show it with the password redacted.
	// Required.
	URL string
	// AMQP configures the connection. Its Recovery must be nil: the Relay
	// reconnects by itself.
	AMQP amqp091.Config
	// ConnectionName is shown in the broker's management tools. Defaults to
	// "inbox relay".
	ConnectionName string

	// BatchSize is how many messages one claim takes (at most one per
	// stream). While a full claim's confirms come and it is recorded, the
	// relay claims and publishes the next ones, so up to three times
	// BatchSize messages, bodies included, are held in memory and wait for
	// their confirms. Defaults to DefaultRelayBatchSize.
	BatchSize int
	// PollInterval is how often an idle relay looks for messages without a
	// wake-up. Defaults to DefaultRelayPollInterval.
	PollInterval time.Duration
	// DisableListen turns off the LISTEN that wakes the relay when another
	// process commits messages; it then relies on in-process wake-ups and
	// polling.
	DisableListen bool
	// StreamHeader and SequenceHeader name the headers that carry an ordered
	// message's stream and sequence number. They default to the Receiver's
	// defaults, DefaultStreamHeader and DefaultSequenceHeader, so that a
	// downstream inbox orders the messages with no configuration.
	StreamHeader   string
	SequenceHeader string

	// ConfirmTimeout bounds the wait for a batch's confirms; past it the
	// connection is cut and the unconfirmed messages are published again.
	// Defaults to DefaultConfirmTimeout.
	ConfirmTimeout time.Duration
	// ReconnectInitial and ReconnectMax shape the backoff between broker
	// sessions. Default to DefaultReconnectInitial and DefaultReconnectMax.
	ReconnectInitial time.Duration
	ReconnectMax     time.Duration
	// OpenTimeout bounds dialling and opening the channel. Defaults to
	// DefaultOpenTimeout.
	OpenTimeout time.Duration
	// ShutdownTimeout bounds recording the batch in hand once Run's context
	// is cancelled, and closing the connection. Defaults to
	// DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// CleanupInterval is how often the relay deletes sent messages past
	// inbox.OutboxConfig.Retention. Defaults to DefaultRelayCleanupInterval.
	CleanupInterval time.Duration

	// Logger receives the Relay's logs. Defaults to slog.Default().
	Logger *slog.Logger
}

func (c RelayConfig) withDefaults() RelayConfig {
	setDefault(&c.ConnectionName, "inbox relay")
	setDefault(&c.BatchSize, DefaultRelayBatchSize)
	setDefault(&c.PollInterval, DefaultRelayPollInterval)
	setDefault(&c.StreamHeader, DefaultStreamHeader)
	setDefault(&c.SequenceHeader, DefaultSequenceHeader)
	setDefault(&c.ConfirmTimeout, DefaultConfirmTimeout)
	setDefault(&c.ReconnectInitial, DefaultReconnectInitial)
	setDefault(&c.ReconnectMax, DefaultReconnectMax)
	setDefault(&c.OpenTimeout, DefaultOpenTimeout)
	setDefault(&c.ShutdownTimeout, DefaultShutdownTimeout)
	setDefault(&c.CleanupInterval, DefaultRelayCleanupInterval)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c RelayConfig) validate() error {
	switch {
	case c.URL == "":
		return errors.New("amqp: RelayConfig.URL is required")
	case !validURI(c.URL):
		return fmt.Errorf("amqp: RelayConfig.URL %s is not an amqp:// or amqps:// URI", redactURL(c.URL))
	case c.AMQP.Recovery != nil:
		return errors.New("amqp: RelayConfig.AMQP.Recovery must be nil: the relay reconnects by itself")
	case c.BatchSize < 1 || c.BatchSize > math.MaxUint16:
		return fmt.Errorf("amqp: RelayConfig.BatchSize %d is outside 1..%d", c.BatchSize, math.MaxUint16)
	case c.StreamHeader == c.SequenceHeader:
		return fmt.Errorf("amqp: RelayConfig.StreamHeader and RelayConfig.SequenceHeader are both %q", c.StreamHeader)
	case c.ReconnectMax < c.ReconnectInitial:
		return errors.New("amqp: RelayConfig.ReconnectMax must be at least RelayConfig.ReconnectInitial")
	}
	return requirePositive("RelayConfig", []namedDuration{
		{"PollInterval", c.PollInterval},
		{"ConfirmTimeout", c.ConfirmTimeout},
		{"ReconnectInitial", c.ReconnectInitial},
		{"OpenTimeout", c.OpenTimeout},
		{"ShutdownTimeout", c.ShutdownTimeout},
		{"CleanupInterval", c.CleanupInterval},
	})
}
