package amqp

import (
	"errors"
	"fmt"
	"go.opentelemetry.io/otel/metric"
	"log/slog"
	"math"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Defaults of Config fields left zero.
const (
	DefaultPrefetch          = 1000
	DefaultBatchSize         = 200
	DefaultBatchLinger       = time.Millisecond
	DefaultBatchesInFlight   = 4
	DefaultStreamHeader      = "x-stream-key"
	DefaultSequenceHeader    = "x-sequence"
	DefaultMaxHeaderBytes    = 64 << 10
	DefaultStoreTimeout      = 30 * time.Second
	DefaultStoreRetryInitial = 100 * time.Millisecond
	DefaultStoreRetryMax     = 5 * time.Second
	DefaultReconnectInitial  = 200 * time.Millisecond
	DefaultReconnectMax      = 30 * time.Second
	DefaultOpenTimeout       = 15 * time.Second
	DefaultShutdownTimeout   = 10 * time.Second
)

// TopicFrom says where a delivery's topic (which selects the inbox handler)
// comes from.
type TopicFrom int

const (
	// TopicFromTypeOrRoutingKey uses the AMQP type property, or the routing
	// key when type is empty.
	TopicFromTypeOrRoutingKey TopicFrom = iota
	// TopicFromType uses only the AMQP type property; a delivery without one
	// is rejected (inbox.ReasonMissingTopic).
	TopicFromType
	// TopicFromRoutingKey uses only the routing key the message was published
	// with.
	TopicFromRoutingKey
)

func (t TopicFrom) String() string {
	switch t {
	case TopicFromTypeOrRoutingKey:
		return "type-or-routing-key"
	case TopicFromType:
		return "type"
	case TopicFromRoutingKey:
		return "routing-key"
	}
	return fmt.Sprintf("TopicFrom(%d)", int(t))
}

// Config tunes a Receiver. URL and Queue are required; every other field has
// a default.
type Config struct {
	// URL is the broker's AMQP URI, e.g. amqp://user:pass@host:5672/vhost.
	// Logs show it with the password redacted. Required.
	URL string
	// Queue is the queue to consume. Required.
	Queue string
	// AMQP configures the connection (TLS, heartbeat, SASL, client
	// properties, Dial). Its Recovery must be nil: the Receiver reconnects by
	// itself, so that it never acks a delivery tag on a channel that did not
	// deliver it.
	AMQP amqp091.Config
	// ConnectionName is shown in the broker's management tools. Defaults to
	// "inbox receiver " followed by Queue.
	ConnectionName string
	// ConsumerTag names the consumer. Defaults to a unique tag chosen by
	// amqp091-go.
	ConsumerTag string
	// Exclusive asks for an exclusive consumer: the broker refuses a second
	// consumer on the queue.
	Exclusive bool

	// Prefetch is how many deliveries the broker sends before it waits for
	// acks (basic.qos prefetch count, 1 to 65535). Keep room for
	// BatchesInFlight batches and one being gathered: the default is enough
	// for the default batches. Defaults to DefaultPrefetch.
	Prefetch int
	// BatchSize is the most deliveries stored in one statement and acked
	// together. At most Prefetch. Defaults to DefaultBatchSize, or, when
	// Prefetch has no room for BatchesInFlight plus one of those, to
	// Prefetch/(BatchesInFlight+1).
	BatchSize int
	// BatchLinger is how long a batch that is not full waits for more
	// deliveries before it is stored, when no other batch is out. While one
	// is, the next keeps gathering until it is full or that store returns
	// (group commit): a busy receiver stores fewer, larger batches, a quiet
	// one waits no longer than the linger. Defaults to DefaultBatchLinger.
	BatchLinger time.Duration
	// BatchesInFlight is how many batches may be out at once: being stored,
	// each on a goroutine of its own and a connection of the Store's pool,
	// or stored and waiting for an earlier batch, since acks go out in
	// delivery order. A batch is gathered while others commit, so the
	// receiver keeps pace with the broker; give the Store's pool this many
	// connections for the receiver. 1 stores one batch at a time. Defaults
	// to DefaultBatchesInFlight.
	BatchesInFlight int

	// Source is the dedup namespace of the stored messages. Defaults to
	// Queue.
	Source string
	// MessageID returns a delivery's message ID, the dedup key. Defaults to
	// the AMQP message_id property. An empty result rejects the delivery
	// (inbox.ReasonMissingID).
	MessageID func(d *amqp091.Delivery) string
	// TopicFrom says where the topic comes from. Defaults to
	// TopicFromTypeOrRoutingKey.
	TopicFrom TopicFrom
	// StreamHeader names the header that carries the ordering key (a string,
	// or an integer written in decimal). Without it, or with it empty, a
	// message is unordered; empty (or void) together with the sequence header
	// is rejected (ReasonBadStream). Defaults to DefaultStreamHeader.
	StreamHeader string
	// SequenceHeader names the header that carries the position within the
	// stream: any AMQP integer type, an integral float or decimal, or a
	// string of decimal digits. Required when the stream header is present,
	// ignored otherwise. Defaults to DefaultSequenceHeader.
	SequenceHeader string
	// MaxHeaderBytes bounds the headers kept with a message (names and
	// values, as stored); a delivery over it is rejected
	// (ReasonHeadersTooLarge). Defaults to DefaultMaxHeaderBytes.
	MaxHeaderBytes int

	// StoreTimeout bounds one attempt to store a batch. Defaults to
	// DefaultStoreTimeout.
	StoreTimeout time.Duration
	// StoreRetryInitial and StoreRetryMax shape the exponential backoff
	// between attempts to store a batch while the database fails. Default to
	// DefaultStoreRetryInitial and DefaultStoreRetryMax.
	StoreRetryInitial time.Duration
	StoreRetryMax     time.Duration

	// ReconnectInitial and ReconnectMax shape the exponential backoff between
	// broker sessions. Default to DefaultReconnectInitial and
	// DefaultReconnectMax.
	ReconnectInitial time.Duration
	ReconnectMax     time.Duration
	// OpenTimeout bounds each step of opening a session (dialling, opening
	// the channels, declaring the topology, basic.qos and basic.consume), and
	// the wait for the broker's confirm of a dead-letter copy. Defaults to
	// DefaultOpenTimeout.
	OpenTimeout time.Duration
	// ShutdownTimeout bounds storing and acking the batches in flight and
	// the batch in hand once Run's context is cancelled, and closing the
	// connection. Defaults to DefaultShutdownTimeout.
	ShutdownTimeout time.Duration

	// Topology, when set, is declared on every session before consuming, so a
	// queue deleted under the Receiver is recreated. Its Queue defaults to
	// Config.Queue and must equal it.
	Topology *Topology
	// DeadLetterExchange and DeadLetterRoutingKey are where the Receiver
	// publishes a copy of each delivery it rejects, with why in its headers
	// (HeaderRejectReason and the other HeaderReject constants), before it
	// acks the delivery: give the queue's own dead-letter exchange and
	// routing key (empty: the delivery's routing key, as the broker would
	// use). The copy goes on a channel in confirm mode and the delivery is
	// acked only once the broker confirmed it; if that fails, or when
	// DeadLetterExchange is empty, the delivery is rejected (basic.reject)
	// and the broker dead-letters it with only its x-death header. Both
	// default to Topology's dead-letter exchange and queue when Topology is
	// set (and has dead-lettering).
	DeadLetterExchange   string
	DeadLetterRoutingKey string

	// Logger receives the Receiver's logs. Defaults to slog.Default().
	Logger *slog.Logger
	// MeterProvider receives the received and malformed counters (see
	// Metrics). Defaults to the global provider.
	MeterProvider metric.MeterProvider
}

func (c Config) withDefaults() Config {
	setDefault(&c.ConnectionName, "inbox receiver "+c.Queue)
	setDefault(&c.Prefetch, DefaultPrefetch)
	setDefault(&c.BatchLinger, DefaultBatchLinger)
	setDefault(&c.BatchesInFlight, DefaultBatchesInFlight)
	// Room in the prefetch for the batches in flight and one being
	// gathered, as with the defaults (1000 = 5 x 200).
	setDefault(&c.BatchSize, min(DefaultBatchSize, max(1, c.Prefetch/max(1, c.BatchesInFlight+1))))
	setDefault(&c.Source, c.Queue)
	setDefault(&c.StreamHeader, DefaultStreamHeader)
	setDefault(&c.SequenceHeader, DefaultSequenceHeader)
	setDefault(&c.MaxHeaderBytes, DefaultMaxHeaderBytes)
	setDefault(&c.StoreTimeout, DefaultStoreTimeout)
	setDefault(&c.StoreRetryInitial, DefaultStoreRetryInitial)
	setDefault(&c.StoreRetryMax, DefaultStoreRetryMax)
	setDefault(&c.ReconnectInitial, DefaultReconnectInitial)
	setDefault(&c.ReconnectMax, DefaultReconnectMax)
	setDefault(&c.OpenTimeout, DefaultOpenTimeout)
	setDefault(&c.ShutdownTimeout, DefaultShutdownTimeout)
	if c.MessageID == nil {
		c.MessageID = func(d *amqp091.Delivery) string { return d.MessageId }
	}
	if c.Topology != nil {
		t := *c.Topology
		setDefault(&t.Queue, c.Queue)
		c.Topology = &t
		if !t.NoDeadLetter && c.DeadLetterExchange == "" {
			t = t.withDefaults()
			c.DeadLetterExchange, c.DeadLetterRoutingKey = t.DeadLetterExchange, t.DeadLetterQueue
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// namedDuration is a configuration field that must be positive.
type namedDuration struct {
	name string
	v    time.Duration
}

// requirePositive reports the first of fields, of the configuration type
// typeName, that is not positive.
func requirePositive(typeName string, fields []namedDuration) error {
	for _, f := range fields {
		if f.v <= 0 {
			return fmt.Errorf("amqp: %s.%s %s must be positive", typeName, f.name, f.v)
		}
	}
	return nil
}

func setDefault[T comparable](field *T, def T) {
	var zero T
	if *field == zero {
		*field = def
	}
}

func (c Config) validate() error {
	switch {
	case c.URL == "":
		return errors.New("amqp: Config.URL is required")
	case c.Queue == "":
		return errors.New("amqp: Config.Queue is required")
	case !validURI(c.URL):
		return fmt.Errorf("amqp: Config.URL %s is not an amqp:// or amqps:// URI", redactURL(c.URL))
	case c.AMQP.Recovery != nil:
		return errors.New("amqp: Config.AMQP.Recovery must be nil: the receiver reconnects by itself")
	case c.Prefetch < 1 || c.Prefetch > math.MaxUint16:
		return fmt.Errorf("amqp: Config.Prefetch %d is outside 1..%d", c.Prefetch, math.MaxUint16)
	case c.BatchSize < 1 || c.BatchSize > c.Prefetch:
		return fmt.Errorf("amqp: Config.BatchSize %d must be between 1 and Config.Prefetch (%d): a batch larger than the prefetch could never fill", c.BatchSize, c.Prefetch)
	case c.BatchesInFlight < 1:
		return fmt.Errorf("amqp: Config.BatchesInFlight %d must be positive", c.BatchesInFlight)
	case c.TopicFrom < TopicFromTypeOrRoutingKey || c.TopicFrom > TopicFromRoutingKey:
		return fmt.Errorf("amqp: Config.TopicFrom %d is not a TopicFrom", c.TopicFrom)
	case c.StreamHeader == c.SequenceHeader:
		return fmt.Errorf("amqp: Config.StreamHeader and Config.SequenceHeader are both %q", c.StreamHeader)
	case c.StoreRetryMax < c.StoreRetryInitial:
		return errors.New("amqp: Config.StoreRetryMax must be at least Config.StoreRetryInitial")
	case c.ReconnectMax < c.ReconnectInitial:
		return errors.New("amqp: Config.ReconnectMax must be at least Config.ReconnectInitial")
	}
	if err := requirePositive("Config", []namedDuration{
		{"BatchLinger", c.BatchLinger},
		{"StoreTimeout", c.StoreTimeout},
		{"StoreRetryInitial", c.StoreRetryInitial},
		{"ReconnectInitial", c.ReconnectInitial},
		{"OpenTimeout", c.OpenTimeout},
		{"ShutdownTimeout", c.ShutdownTimeout},
	}); err != nil {
		return err
	}
	if c.DeadLetterExchange == "" && c.DeadLetterRoutingKey != "" {
		return errors.New("amqp: Config.DeadLetterRoutingKey needs a Config.DeadLetterExchange")
	}
	if len(c.DeadLetterExchange) > maxNameBytes || len(c.DeadLetterRoutingKey) > maxNameBytes {
		return fmt.Errorf("amqp: Config.DeadLetterExchange and DeadLetterRoutingKey must be at most %d bytes", maxNameBytes)
	}
	if c.MaxHeaderBytes < 0 {
		return fmt.Errorf("amqp: Config.MaxHeaderBytes %d must be positive", c.MaxHeaderBytes)
	}
	if c.Topology != nil {
		if c.Topology.Queue != c.Queue {
			return fmt.Errorf("amqp: Config.Topology.Queue %q differs from Config.Queue %q", c.Topology.Queue, c.Queue)
		}
		if err := c.Topology.validate(); err != nil {
			return fmt.Errorf("amqp: Config.Topology: %w", err)
		}
	}
	return nil
}
