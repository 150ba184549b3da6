package amqp

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/inboxkit/inbox"
)

func TestParseSequence(t *testing.T) {
	good := []struct {
		in   any
		want int64
	}{
		{int8(7), 7},
		{int8(math.MaxInt8), math.MaxInt8},
		{uint8(math.MaxUint8), math.MaxUint8},
		{int16(math.MaxInt16), math.MaxInt16},
		{uint16(math.MaxUint16), math.MaxUint16},
		{int32(math.MaxInt32), math.MaxInt32},
		{uint32(math.MaxUint32), math.MaxUint32},
		{int64(math.MaxInt64), math.MaxInt64},
		{uint64(math.MaxInt64), math.MaxInt64},
		{int(42), 42},
		{uint(42), 42},
		{int64(0), 0},
		{float32(12), 12},
		{float64(1 << 53), 1 << 53},
		{amqp091.Decimal{Scale: 0, Value: 5}, 5},
		{amqp091.Decimal{Scale: 2, Value: 500}, 5},
		{"0", 0},
		{"123", 123},
		{"9223372036854775807", math.MaxInt64},
		{[]byte("77"), 77},
	}
	for _, c := range good {
		got, err := ParseSequence(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseSequence(%T %v) = %d, %v; want %d", c.in, c.in, got, err, c.want)
		}
	}
	bad := []struct {
		in   any
		want string
	}{
		{int8(-1), "negative"},
		{int16(-1), "negative"},
		{int32(-1), "negative"},
		{int64(math.MinInt64), "negative"},
		{uint64(math.MaxInt64 + 1), "int64 range"},
		{uint64(math.MaxUint64), "int64 range"},
		{float64(1.5), "not an integer"},
		{float32(-2), "negative"},
		{math.NaN(), "not a number"},
		{math.Inf(1), "not a number"},
		{float64(1<<53 + 2), "2^53"},
		{amqp091.Decimal{Scale: 1, Value: 15}, "not an integer"},
		{amqp091.Decimal{Scale: 0, Value: -5}, "negative"},
		{"", "empty"},
		{"-4", "negative"},
		{"+4", "not a decimal"},
		{" 4", "not a decimal"},
		{"4 ", "not a decimal"},
		{"1_000", "not a decimal"},
		{"0x10", "not a decimal"},
		{"1e3", "not a decimal"},
		{"twelve", "not a decimal"},
		{"9223372036854775808", "int64 range"},
		{[]byte("x"), "not a decimal"},
		{true, "not a number"},
		{nil, "void"},
		{time.Unix(5, 0), "not a number"},
		{amqp091.Table{"a": 1}, "not a number"},
		{[]any{int32(1)}, "not a number"},
	}
	for _, c := range bad {
		got, err := ParseSequence(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseSequence(%T %v) = %d, %v; want an error containing %q", c.in, c.in, got, err, c.want)
		}
	}
}

func TestParseSequenceErrorIsBounded(t *testing.T) {
	_, err := ParseSequence(strings.Repeat("z", 10000))
	if err == nil || len(err.Error()) > 100 {
		t.Fatalf("error of %d bytes: an untrusted header must not blow up the log line", len(err.Error()))
	}
}

func TestHeaderString(t *testing.T) {
	cases := []struct {
		in   any
		want string
	}{
		{"text", "text"},
		{[]byte("utf8"), "utf8"},
		{[]byte{0xff, 0x00}, "/wA="},
		{true, "true"},
		{int8(-8), "-8"},
		{uint16(16), "16"},
		{int64(-64), "-64"},
		{uint64(math.MaxUint64), "18446744073709551615"},
		{float32(1.5), "1.5"},
		{float64(2.25), "2.25"},
		{amqp091.Decimal{Scale: 2, Value: 12345}, "123.45"},
		{amqp091.Decimal{Scale: 3, Value: -5}, "-0.005"},
		{time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC), "2024-05-06T07:08:09Z"},
		{nil, ""},
		{[]any{"a", int32(1)}, `["a",1]`},
		{amqp091.Table{"reason": "rejected", "count": int64(1), "time": time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)},
			`{"count":1,"reason":"rejected","time":"2024-01-02T03:04:05Z"}`},
	}
	for _, c := range cases {
		if got := HeaderString(c.in); got != c.want {
			t.Errorf("HeaderString(%T %v) = %q, want %q", c.in, c.in, got, c.want)
		}
	}
}

func testMapper(t *testing.T, mutate func(*Config)) mapper {
	t.Helper()
	cfg := Config{URL: "amqp://localhost/", Queue: "orders"}
	if mutate != nil {
		mutate(&cfg)
	}
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	return newMapper(cfg)
}

func TestMapperMessage(t *testing.T) {
	m := testMapper(t, nil)
	ts := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	d := &amqp091.Delivery{
		MessageId:     "id-1",
		Type:          "order.created",
		RoutingKey:    "orders.eu",
		Exchange:      "shop",
		ContentType:   "application/json",
		CorrelationId: "corr",
		AppId:         "checkout",
		Timestamp:     ts,
		Body:          []byte(`{"a":1}`),
		Headers: amqp091.Table{
			"traceparent":  "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
			"x-stream-key": "customer-9",
			"x-sequence":   int16(3),
			"attempt":      int32(2),
		},
	}
	msg, rej := m.message(d)
	if rej != nil {
		t.Fatal(rej)
	}
	if msg.ID != "id-1" || msg.Source != "orders" || msg.Topic != "order.created" || msg.Stream != "customer-9" || msg.Seq != 3 || string(msg.Body) != `{"a":1}` {
		t.Fatalf("message %+v", msg)
	}
	want := map[string]string{
		"traceparent":       "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"x-stream-key":      "customer-9",
		"x-sequence":        "3",
		"attempt":           "2",
		HeaderExchange:      "shop",
		HeaderRoutingKey:    "orders.eu",
		HeaderContentType:   "application/json",
		HeaderCorrelationID: "corr",
		HeaderType:          "order.created",
		HeaderAppID:         "checkout",
		HeaderTimestamp:     "2024-05-06T07:08:09Z",
	}
	if len(msg.Headers) != len(want) {
		t.Errorf("headers %v, want %v", msg.Headers, want)
	}
	for k, v := range want {
		if msg.Headers[k] != v {
			t.Errorf("header %s = %q, want %q", k, msg.Headers[k], v)
		}
	}
}

func TestMapperTopic(t *testing.T) {
	both := &amqp091.Delivery{Type: "t", RoutingKey: "rk"}
	onlyKey := &amqp091.Delivery{RoutingKey: "rk"}
	cases := []struct {
		from      TopicFrom
		d         *amqp091.Delivery
		wantTopic string
	}{
		{TopicFromTypeOrRoutingKey, both, "t"},
		{TopicFromTypeOrRoutingKey, onlyKey, "rk"},
		{TopicFromType, both, "t"},
		{TopicFromType, onlyKey, ""},
		{TopicFromRoutingKey, both, "rk"},
	}
	for _, c := range cases {
		m := testMapper(t, func(cfg *Config) { cfg.TopicFrom = c.from })
		if got := m.topic(c.d); got != c.wantTopic {
			t.Errorf("%s: topic %q, want %q", c.from, got, c.wantTopic)
		}
	}
}

func TestMapperCustomNames(t *testing.T) {
	m := testMapper(t, func(cfg *Config) {
		cfg.Source = "billing"
		cfg.StreamHeader = "entity"
		cfg.SequenceHeader = "version"
		cfg.MessageID = func(d *amqp091.Delivery) string { return HeaderString(d.Headers["event-id"]) }
	})
	msg, rej := m.message(&amqp091.Delivery{Type: "t", Headers: amqp091.Table{
		"event-id": []byte("e-7"), "entity": int64(99), "version": "12",
		"x-stream-key": "ignored", "x-sequence": "garbage",
	}})
	if rej != nil {
		t.Fatal(rej)
	}
	if msg.ID != "e-7" || msg.Source != "billing" || msg.Stream != "99" || msg.Seq != 12 {
		t.Fatalf("message %+v", msg)
	}
}

func TestMapperRejections(t *testing.T) {
	m := testMapper(t, func(cfg *Config) { cfg.MaxHeaderBytes = 1000 })
	cases := []struct {
		name    string
		headers amqp091.Table
		reason  string
	}{
		{"garbage sequence", amqp091.Table{"x-stream-key": "s", "x-sequence": "x"}, inbox.ReasonBadSequence},
		{"negative sequence", amqp091.Table{"x-stream-key": "s", "x-sequence": int64(-1)}, inbox.ReasonBadSequence},
		{"missing sequence", amqp091.Table{"x-stream-key": "s"}, inbox.ReasonBadSequence},
		{"bool stream", amqp091.Table{"x-stream-key": false, "x-sequence": 1}, ReasonBadStream},
		{"fraction stream", amqp091.Table{"x-stream-key": 1.5, "x-sequence": 1}, ReasonBadStream},
		{"empty stream with a sequence", amqp091.Table{"x-stream-key": "", "x-sequence": 4}, ReasonBadStream},
		{"empty byte stream with a sequence", amqp091.Table{"x-stream-key": []byte{}, "x-sequence": "garbage"}, ReasonBadStream},
		{"void stream with a sequence", amqp091.Table{"x-stream-key": nil, "x-sequence": 4}, ReasonBadStream},
		{"big headers", amqp091.Table{"h": strings.Repeat("v", 1001)}, ReasonHeadersTooLarge},
	}
	for _, c := range cases {
		_, rej := m.message(&amqp091.Delivery{MessageId: "id", Type: "t", Headers: c.headers})
		if rej == nil || rej.reason != c.reason {
			t.Errorf("%s: rejection %v, want reason %q", c.name, rej, c.reason)
		}
	}
	// Unordered messages: no stream, so a sequence is ignored, and an empty
	// or void stream key without a sequence means none.
	for _, h := range []amqp091.Table{
		{"x-sequence": "garbage"},
		{"x-stream-key": ""},
		{"x-stream-key": nil},
	} {
		msg, rej := m.message(&amqp091.Delivery{MessageId: "id", Type: "t", Headers: h})
		if rej != nil || msg.Stream != "" || msg.Seq != 0 {
			t.Errorf("headers %v: %+v, %v; want an unordered message", h, msg, rej)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		field  string
		mutate func(*Config)
	}{
		{"Config.URL", func(c *Config) { c.URL = "" }},
		{"Config.URL", func(c *Config) { c.URL = "http://user:hunter2@host/" }},
		{"Config.Queue", func(c *Config) { c.Queue = "" }},
		{"Config.Prefetch", func(c *Config) { c.Prefetch = 70000 }},
		{"Config.Prefetch", func(c *Config) { c.Prefetch = -1 }},
		{"Config.BatchSize", func(c *Config) { c.Prefetch, c.BatchSize = 10, 11 }},
		{"Config.TopicFrom", func(c *Config) { c.TopicFrom = 9 }},
		{"Config.StreamHeader", func(c *Config) { c.StreamHeader, c.SequenceHeader = "h", "h" }},
		{"Config.BatchLinger", func(c *Config) { c.BatchLinger = -time.Second }},
		{"Config.BatchesInFlight", func(c *Config) { c.BatchesInFlight = -1 }},
		{"Config.ReconnectMax", func(c *Config) { c.ReconnectInitial, c.ReconnectMax = time.Second, time.Millisecond }},
		{"Config.AMQP.Recovery", func(c *Config) { c.AMQP.Recovery = &amqp091.Recovery{} }},
		{"Config.Topology.Queue", func(c *Config) { c.Topology = &Topology{Queue: "other"} }},
		{"Config.Topology", func(c *Config) { c.Topology = &Topology{RoutingKeys: []string{"k"}} }},
		{"Config.DeadLetterRoutingKey", func(c *Config) { c.DeadLetterRoutingKey = "k" }},
		{"Config.DeadLetterExchange", func(c *Config) { c.DeadLetterExchange = strings.Repeat("x", 256) }},
	}
	for _, c := range cases {
		cfg := Config{URL: "amqp://guest:guest@localhost/", Queue: "orders"}
		c.mutate(&cfg)
		_, err := NewReceiver(nopStore{}, cfg)
		if err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: error %v, want one naming it", c.field, err)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("error %q shows the password", err)
		}
	}
	r, err := NewReceiver(nopStore{}, Config{URL: "amqp://guest:guest@localhost/", Queue: "orders", Topology: &Topology{}})
	if err != nil {
		t.Fatal(err)
	}
	got := r.Config()
	if got.Prefetch != DefaultPrefetch || got.BatchSize != DefaultBatchSize || got.BatchesInFlight != DefaultBatchesInFlight || got.Source != "orders" ||
		got.StreamHeader != DefaultStreamHeader || got.Topology.Queue != "orders" ||
		got.AMQP.Properties["connection_name"] != "inbox receiver orders" ||
		got.DeadLetterExchange != "orders.dlx" || got.DeadLetterRoutingKey != "orders.dead" {
		t.Fatalf("defaults not applied: %+v", got)
	}
	// A prefetch set smaller than the default batch needs: the batch
	// shrinks to leave room for the batches in flight and one gathering.
	for _, c := range []struct{ prefetch, inFlight, batch int }{{500, 0, 100}, {100, 0, 20}, {100, 1, 50}, {3, 4, 1}, {5000, 0, DefaultBatchSize}} {
		r, err := NewReceiver(nopStore{}, Config{URL: "amqp://localhost/", Queue: "q", Prefetch: c.prefetch, BatchesInFlight: c.inFlight})
		if err != nil {
			t.Errorf("Prefetch %d, BatchesInFlight %d: %v", c.prefetch, c.inFlight, err)
		} else if got := r.Config().BatchSize; got != c.batch {
			t.Errorf("Prefetch %d, BatchesInFlight %d: BatchSize %d, want %d", c.prefetch, c.inFlight, got, c.batch)
		}
	}
	r, err = NewReceiver(nopStore{}, Config{URL: "amqp://guest:guest@localhost/", Queue: "orders", Topology: &Topology{NoDeadLetter: true}})
	if err != nil || r.Config().DeadLetterExchange != "" {
		t.Fatalf("a topology without dead-lettering gave dead-letter exchange %q, %v", r.Config().DeadLetterExchange, err)
	}
	if _, err := NewReceiver(nil, Config{URL: "amqp://localhost/", Queue: "q"}); err == nil {
		t.Fatal("NewReceiver accepted a nil store")
	}
}

func TestTopologyDefaults(t *testing.T) {
	got := Topology{Queue: "orders", Exchange: "shop"}.withDefaults()
	if got.DeadLetterExchange != "orders.dlx" || got.DeadLetterQueue != "orders.dead" ||
		got.ExchangeType != "topic" || len(got.RoutingKeys) != 1 || got.RoutingKeys[0] != "#" ||
		got.Classic || got.DeliveryLimit != DefaultDeliveryLimit {
		t.Fatalf("defaults %+v", got)
	}
	if err := (Topology{Queue: "q", DeadLetterQueue: "q"}).validate(); err == nil {
		t.Fatal("a queue that dead-letters into itself was accepted")
	}
	if err := (Topology{Queue: strings.Repeat("q", 256)}).validate(); err == nil {
		t.Fatal("a queue name over 255 bytes was accepted")
	}
}

func TestRedactURL(t *testing.T) {
	if got := redactURL("amqp://user:hunter2@host:5672/vh"); strings.Contains(got, "hunter2") || !strings.Contains(got, "user") {
		t.Fatalf("redactURL = %q", got)
	}
	if got := redactURL("amqp://user:hunter2@host:5672/%zz"); strings.Contains(got, "hunter2") {
		t.Fatalf("redactURL of an unparsable URL = %q", got)
	}
}

func TestTruncate(t *testing.T) {
	if got := truncate("ééé", 3); got != "é…" {
		t.Fatalf("truncate cut a rune: %q", got)
	}
}

type nopStore struct{}

func (nopStore) Validate(inbox.Message) error { return nil }

func (nopStore) Store(_ context.Context, msgs ...inbox.Message) (inbox.StoreResult, error) {
	return inbox.StoreResult{New: make([]bool, len(msgs)), Stored: len(msgs)}, nil
}
