package inbox

import (
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/inboxkit/inbox/internal/sqlident"
)

// Defaults of Config fields left zero.
const (
	DefaultSchema              = "inbox"
	DefaultSource              = "default"
	DefaultWorkers             = 4
	DefaultBatchSize           = 50
	DefaultStreamBatchSize     = 50
	DefaultStreamsPerClaim     = 8
	DefaultPollInterval        = time.Second
	DefaultMaxAttempts         = 10
	DefaultRetryInitial        = time.Second
	DefaultRetryMax            = 10 * time.Minute
	DefaultRetryJitter         = 0.5
	DefaultHandlerTimeout      = 5 * time.Minute
	DefaultBatchBudget         = time.Second
	DefaultMaxBodyBytes        = 1 << 20
	DefaultRetention           = 24 * time.Hour
	DefaultCleanupBatch        = 1000
	DefaultMaintenanceInterval = 5 * time.Second
	DefaultFirstSeq            = 1
	DefaultGapTimeout          = time.Minute
)

// NoJitter, as Config.RetryJitter, makes retry delays exact: the zero
// value means DefaultRetryJitter, so "none" needs a value of its own (any
// negative one works).
const NoJitter = -1.0

// Limits on message fields, so an untrusted publisher cannot make rows huge
// through the key columns.
const (
	MaxIDBytes     = 512
	MaxStreamBytes = 512
)

// GapPolicy says what happens to a stream whose next sequence number has not
// arrived within Config.GapTimeout while later ones have.
type GapPolicy int

const (
	// GapWait keeps waiting for the missing message; the gap is reported in
	// the log and in Stats, and the stream stays visible as waiting.
	GapWait GapPolicy = iota
	// GapSkip gives up on the missing sequence numbers: the stream moves on to
	// the lowest one it has, and the skip is recorded on the stream. A
	// skipped message that arrives later is stored dead (StoreResult.Late).
	GapSkip
	// GapPark parks the stream until an operator retries or skips it.
	GapPark
)

func (p GapPolicy) String() string {
	switch p {
	case GapWait:
		return "wait"
	case GapSkip:
		return "skip"
	case GapPark:
		return "park"
	}
	return fmt.Sprintf("GapPolicy(%d)", int(p))
}

// Config tunes an Inbox. The zero value is usable: every field has a default.
type Config struct {
	// Schema holds the inbox tables (see package migrations). Defaults to
	// DefaultSchema.
	Schema string
	// Source is the dedup namespace for messages stored without one.
	// Defaults to DefaultSource.
	Source string

	// Workers is the number of concurrent workers in this process. Each holds
	// one pool connection while it works. Defaults to DefaultWorkers.
	Workers int
	// BatchSize is how many unordered messages a worker claims at once.
	// Defaults to DefaultBatchSize.
	BatchSize int
	// StreamBatchSize is how many consecutive messages of one claimed stream a
	// worker handles in one transaction. Defaults to DefaultStreamBatchSize.
	StreamBatchSize int
	// StreamsPerClaim is how many ready streams a worker claims at once.
	// Defaults to DefaultStreamsPerClaim.
	StreamsPerClaim int
	// PollInterval is how often idle workers look for work without a
	// wake-up. Defaults to DefaultPollInterval.
	PollInterval time.Duration
	// DisableListen turns off LISTEN/NOTIFY wake-ups between processes;
	// workers then rely on in-process wake-ups and polling.
	DisableListen bool

	// MaxAttempts is how many times a handler runs for one message before it
	// is dead. Defaults to DefaultMaxAttempts.
	MaxAttempts int
	// RetryInitial, RetryMax and RetryJitter shape the exponential backoff
	// between attempts (doubling from RetryInitial up to RetryMax, each delay
	// randomised by ±RetryJitter, a fraction up to 1). Default to
	// DefaultRetryInitial, DefaultRetryMax and DefaultRetryJitter. Zero
	// means the default, so exact delays take NoJitter.
	RetryInitial time.Duration
	RetryMax     time.Duration
	RetryJitter  float64
	// HandlerTimeout bounds one handler run; the handler's context is
	// cancelled after it. The server also ends a claim's session when the
	// claim stays idle, or one of its statements runs, for HandlerTimeout
	// plus 5 s: that bounds a handler that ignores its context. Defaults to
	// DefaultHandlerTimeout.
	HandlerTimeout time.Duration
	// BatchBudget bounds how long a worker keeps starting handlers in one
	// claim: once it is spent, the worker commits what is done and the
	// messages it has not started go back to pending, for any worker to
	// claim. A claim's transaction, and the locks it holds on its messages
	// and streams, thus lasts at most BatchBudget plus one handler run.
	// Defaults to DefaultBatchBudget.
	BatchBudget time.Duration

	// MaxBodyBytes rejects larger bodies at Store. Defaults to
	// DefaultMaxBodyBytes.
	MaxBodyBytes int
	// StrictTopics makes Store reject messages whose topic has no handler
	// registered on this Inbox. Without it such messages are stored and wait
	// for an Inbox that handles their topic, forever if none does; an Inbox
	// with handlers warns once per such topic, and Stats.UnhandledPending
	// counts them.
	StrictTopics bool

	// Retention is how long processed messages keep their dedup key.
	// Defaults to DefaultRetention.
	Retention time.Duration
	// CleanupBatch bounds one delete of expired rows. Defaults to
	// DefaultCleanupBatch.
	CleanupBatch int
	// MaintenanceInterval is how often one instance runs cleanup and gap
	// checks. Defaults to DefaultMaintenanceInterval.
	MaintenanceInterval time.Duration
	// IdleStreamExpiry, when positive, deletes the rows of ordered streams
	// (their watermark and skipped ranges) that have no pending message,
	// are not parked, and whose watermark has not moved for this long.
	// A message of such a stream that arrives later starts the stream
	// again at FirstSeq; only its message ID, within Retention, still
	// catches it as a duplicate (see "Idle streams" in the package
	// documentation). Defaults to 0: streams are never expired.
	IdleStreamExpiry time.Duration

	// FirstSeq is the first sequence number of every stream. Defaults to
	// DefaultFirstSeq. It is a pointer because 0 is a valid first sequence
	// number while the zero Config must mean the default: for streams that
	// start at 0, set it to the address of a variable holding 0.
	FirstSeq *int64
	// GapTimeout is how long a stream waits for a missing sequence number
	// before GapPolicy applies. Defaults to DefaultGapTimeout.
	GapTimeout time.Duration
	// GapPolicy is what happens after GapTimeout. Defaults to GapWait.
	GapPolicy GapPolicy

	// Logger receives the inbox's logs. Defaults to slog.Default().
	Logger *slog.Logger
	// MeterProvider receives the inbox's metrics (the Metric constants).
	// Defaults to the global one, otel.GetMeterProvider(), which records
	// nothing until the application installs an SDK.
	MeterProvider metric.MeterProvider
	// TracerProvider receives the spans of Store and of handler runs.
	// Defaults to the global one, otel.GetTracerProvider().
	TracerProvider trace.TracerProvider
	// Middleware wraps every registered handler, first one outermost.
	Middleware []Middleware
}

func (c Config) withDefaults() Config {
	setDefault(&c.Schema, DefaultSchema)
	setDefault(&c.Source, DefaultSource)
	setDefault(&c.Workers, DefaultWorkers)
	setDefault(&c.BatchSize, DefaultBatchSize)
	setDefault(&c.StreamBatchSize, DefaultStreamBatchSize)
	setDefault(&c.StreamsPerClaim, DefaultStreamsPerClaim)
	setDefault(&c.PollInterval, DefaultPollInterval)
	setDefault(&c.MaxAttempts, DefaultMaxAttempts)
	setDefault(&c.RetryInitial, DefaultRetryInitial)
	setDefault(&c.RetryMax, DefaultRetryMax)
	setDefault(&c.RetryJitter, DefaultRetryJitter)
	setDefault(&c.HandlerTimeout, DefaultHandlerTimeout)
	setDefault(&c.BatchBudget, DefaultBatchBudget)
	setDefault(&c.MaxBodyBytes, DefaultMaxBodyBytes)
	setDefault(&c.Retention, DefaultRetention)
	setDefault(&c.CleanupBatch, DefaultCleanupBatch)
	setDefault(&c.MaintenanceInterval, DefaultMaintenanceInterval)
	setDefault(&c.GapTimeout, DefaultGapTimeout)
	if c.FirstSeq == nil {
		first := int64(DefaultFirstSeq)
		c.FirstSeq = &first
	}
	if c.RetryJitter < 0 {
		c.RetryJitter = 0
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.MeterProvider == nil {
		c.MeterProvider = otel.GetMeterProvider()
	}
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	return c
}

func setDefault[T comparable](field *T, def T) {
	var zero T
	if *field == zero {
		*field = def
	}
}

func (c Config) validate() error {
	if err := sqlident.Validate(c.Schema); err != nil {
		return fmt.Errorf("inbox: Config.Schema: %w", err)
	}
	if err := requirePositive("Config", []positiveField{
		{"Workers", c.Workers > 0},
		{"BatchSize", c.BatchSize > 0},
		{"StreamBatchSize", c.StreamBatchSize > 0},
		{"StreamsPerClaim", c.StreamsPerClaim > 0},
		{"PollInterval", c.PollInterval > 0},
		{"MaxAttempts", c.MaxAttempts > 0},
		{"RetryInitial", c.RetryInitial > 0},
		{"RetryMax", c.RetryMax >= c.RetryInitial},
		{"HandlerTimeout", c.HandlerTimeout > 0},
		{"BatchBudget", c.BatchBudget > 0},
		{"MaxBodyBytes", c.MaxBodyBytes > 0},
		{"Retention", c.Retention > 0},
		{"CleanupBatch", c.CleanupBatch > 0},
		{"MaintenanceInterval", c.MaintenanceInterval > 0},
		{"GapTimeout", c.GapTimeout > 0},
	}); err != nil {
		return err
	}
	if c.RetryJitter > 1 {
		return fmt.Errorf("inbox: Config.RetryJitter %v must be at most 1", c.RetryJitter)
	}
	if c.IdleStreamExpiry < 0 {
		return fmt.Errorf("inbox: Config.IdleStreamExpiry must not be negative (0: never expire)")
	}
	if c.GapPolicy < GapWait || c.GapPolicy > GapPark {
		return fmt.Errorf("inbox: Config.GapPolicy %d is not a GapPolicy", c.GapPolicy)
	}
	if len(c.Source) > MaxIDBytes {
		return fmt.Errorf("inbox: Config.Source is longer than %d bytes", MaxIDBytes)
	}
	return nil
}

// positiveField is a configuration field that must be positive, and
// whether it is.
type positiveField struct {
	name string
	ok   bool
}

// requirePositive names the first of fields, of the configuration struct
// typ, that is not positive.
func requirePositive(typ string, fields []positiveField) error {
	for _, f := range fields {
		if !f.ok {
			return fmt.Errorf("inbox: %s.%s must be positive (RetryMax at least RetryInitial)", typ, f.name)
		}
	}
	return nil
}
