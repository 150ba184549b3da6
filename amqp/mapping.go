package amqp

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/inboxkit/inbox"
)

// Rejection reasons of the receiver's own, besides the inbox.Reason
// constants that inbox.Inbox.Validate reports.
const (
	// ReasonBadStream: the stream header is neither a string nor an integer,
	// or it is empty (or void) while the sequence header is set.
	ReasonBadStream = "bad stream key"
	// ReasonHeadersTooLarge: the headers exceed Config.MaxHeaderBytes.
	ReasonHeadersTooLarge = "headers too large"
)

// Headers the receiver adds to Message.Headers from the AMQP properties, when
// the delivery has them. Application headers of the same name are replaced.
const (
	HeaderExchange      = "amqp-exchange"
	HeaderRoutingKey    = "amqp-routing-key"
	HeaderContentType   = "amqp-content-type"
	HeaderCorrelationID = "amqp-correlation-id"
	HeaderType          = "amqp-type"
	HeaderAppID         = "amqp-app-id"
	HeaderUserID        = "amqp-user-id"
	HeaderTimestamp     = "amqp-timestamp"
	HeaderReplyTo       = "amqp-reply-to"
)

// rejection is why a delivery cannot become a message.
type rejection struct {
	reason string
	detail string
}

func (r *rejection) Error() string {
	if r.detail == "" {
		return r.reason
	}
	return r.reason + ": " + r.detail
}

// mapper turns deliveries into inbox messages.
type mapper struct {
	source         string
	messageID      func(*amqp091.Delivery) string
	topicFrom      TopicFrom
	streamHeader   string
	sequenceHeader string
	maxHeaderBytes int
}

func newMapper(cfg Config) mapper {
	return mapper{
		source:         cfg.Source,
		messageID:      cfg.MessageID,
		topicFrom:      cfg.TopicFrom,
		streamHeader:   cfg.StreamHeader,
		sequenceHeader: cfg.SequenceHeader,
		maxHeaderBytes: cfg.MaxHeaderBytes,
	}
}

// message maps d, or says why it cannot. Checks that the inbox makes itself
// (ID present, lengths, body size, sequence lower bound) are left to
// inbox.Inbox.Validate, so the two cannot disagree.
func (m mapper) message(d *amqp091.Delivery) (inbox.Message, *rejection) {
	msg := inbox.Message{
		ID:     m.messageID(d),
		Source: m.source,
		Topic:  m.topic(d),
		Body:   d.Body,
	}
	if raw, ok := d.Headers[m.streamHeader]; ok {
		var stream string
		if raw != nil {
			var err error
			if stream, err = streamKey(raw); err != nil {
				return msg, &rejection{ReasonBadStream, fmt.Sprintf("header %s: %v", m.streamHeader, err)}
			}
		}
		seqRaw, hasSeq := d.Headers[m.sequenceHeader]
		switch {
		case stream == "" && hasSeq:
			// A publisher that sends a position means the message to be
			// ordered: taking it as unordered would quietly drop that.
			return msg, &rejection{ReasonBadStream, fmt.Sprintf("header %s is empty while %s is set", m.streamHeader, m.sequenceHeader)}
		case stream != "" && !hasSeq:
			return msg, &rejection{inbox.ReasonBadSequence, fmt.Sprintf("header %s is missing while %s is set", m.sequenceHeader, m.streamHeader)}
		case stream != "":
			seq, err := ParseSequence(seqRaw)
			if err != nil {
				return msg, &rejection{inbox.ReasonBadSequence, fmt.Sprintf("header %s: %v", m.sequenceHeader, err)}
			}
			msg.Stream, msg.Seq = stream, seq
		}
	}
	headers, size := stringHeaders(d)
	if size > m.maxHeaderBytes {
		return msg, &rejection{ReasonHeadersTooLarge, fmt.Sprintf("%d bytes, limit %d", size, m.maxHeaderBytes)}
	}
	msg.Headers = headers
	return msg, nil
}

func (m mapper) topic(d *amqp091.Delivery) string {
	switch m.topicFrom {
	case TopicFromType:
		return d.Type
	case TopicFromRoutingKey:
		return d.RoutingKey
	}
	if d.Type != "" {
		return d.Type
	}
	return d.RoutingKey
}

// streamKey accepts a string (or byte array) or an integer, which some
// publishers use for entity IDs.
func streamKey(v any) (string, error) {
	switch s := v.(type) {
	case string:
		return s, nil
	case []byte:
		return string(s), nil
	}
	n, err := integer(v)
	if err != nil {
		return "", fmt.Errorf("neither a string nor an integer: %w", err)
	}
	return strconv.FormatInt(n, 10), nil
}

// maxExactFloat is the largest integer up to which every integer is exactly
// representable as a float64 (2^53); beyond it a float sequence number may
// already have been rounded by the publisher.
const maxExactFloat = 1 << 53

// ParseSequence reads a sequence number from an AMQP header value as
// amqp091-go decodes it. It accepts every AMQP integer type (int8 to int64,
// uint8 to uint64), floats that hold an integer no larger than 2^53, decimals
// without a fractional part, and strings (or byte arrays) of decimal digits.
// It rejects negative numbers, numbers beyond int64, fractions, booleans,
// empty strings, signs, spaces and anything else.
func ParseSequence(v any) (int64, error) {
	var (
		n   int64
		err error
	)
	switch s := v.(type) {
	case string:
		n, err = decimalString(s)
	case []byte:
		n, err = decimalString(string(s))
	default:
		n, err = integer(v)
	}
	if err != nil {
		return 0, err
	}
	if n < 0 {
		return 0, fmt.Errorf("%d is negative", n)
	}
	return n, nil
}

// integer converts the numeric types of the AMQP field table to int64.
func integer(v any) (int64, error) {
	switch n := v.(type) {
	case int8:
		return int64(n), nil
	case int16:
		return int64(n), nil
	case int32:
		return int64(n), nil
	case int64:
		return n, nil
	case int:
		return int64(n), nil
	case uint8:
		return int64(n), nil
	case uint16:
		return int64(n), nil
	case uint32:
		return int64(n), nil
	case uint64:
		if n > math.MaxInt64 {
			return 0, fmt.Errorf("%d exceeds the int64 range", n)
		}
		return int64(n), nil
	case uint:
		if uint64(n) > math.MaxInt64 {
			return 0, fmt.Errorf("%d exceeds the int64 range", n)
		}
		return int64(n), nil
	case float32:
		return integralFloat(float64(n))
	case float64:
		return integralFloat(n)
	case amqp091.Decimal:
		return integralDecimal(n)
	case nil:
		return 0, errors.New("value is void")
	}
	return 0, fmt.Errorf("type %T is not a number", v)
}

func integralFloat(f float64) (int64, error) {
	switch {
	case math.IsNaN(f) || math.IsInf(f, 0):
		return 0, fmt.Errorf("%v is not a number", f)
	case f != math.Trunc(f):
		return 0, fmt.Errorf("%v is not an integer", f)
	case math.Abs(f) > maxExactFloat:
		return 0, fmt.Errorf("float %v is beyond 2^53, where floats lose integers", f)
	}
	return int64(f), nil
}

func integralDecimal(d amqp091.Decimal) (int64, error) {
	v := int64(d.Value)
	for i := uint8(0); i < d.Scale; i++ {
		if v%10 != 0 {
			return 0, fmt.Errorf("decimal %d scale %d is not an integer", d.Value, d.Scale)
		}
		v /= 10
	}
	return v, nil
}

// decimalString accepts only ASCII digits: no sign, no spaces, no
// underscores, so that "1_000", "+1" or " 1" from a careless publisher is
// reported rather than guessed at.
func decimalString(s string) (int64, error) {
	if s == "" {
		return 0, errors.New("empty string")
	}
	if len(s) > 1 && s[0] == '-' && allDigits(s[1:]) {
		return 0, fmt.Errorf("%s is negative", truncate(s, 40))
	}
	if !allDigits(s) {
		return 0, fmt.Errorf("%q is not a decimal number", truncate(s, 40))
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q exceeds the int64 range", truncate(s, 40))
	}
	return n, nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// stringHeaders flattens the delivery's application headers and the useful
// AMQP properties to strings, and reports their total size.
func stringHeaders(d *amqp091.Delivery) (map[string]string, int) {
	out := make(map[string]string, len(d.Headers)+4)
	for k, v := range d.Headers {
		out[k] = HeaderString(v)
	}
	props := []struct{ name, value string }{
		{HeaderExchange, d.Exchange},
		{HeaderRoutingKey, d.RoutingKey},
		{HeaderContentType, d.ContentType},
		{HeaderCorrelationID, d.CorrelationId},
		{HeaderType, d.Type},
		{HeaderAppID, d.AppId},
		{HeaderUserID, d.UserId},
		{HeaderReplyTo, d.ReplyTo},
	}
	for _, p := range props {
		if p.value != "" {
			out[p.name] = p.value
		}
	}
	if !d.Timestamp.IsZero() {
		out[HeaderTimestamp] = d.Timestamp.UTC().Format(time.RFC3339)
	}
	size := 0
	for k, v := range out {
		size += len(k) + len(v)
	}
	return out, size
}

// HeaderString renders an AMQP header value as the string kept in
// Message.Headers: strings as they are, numbers in decimal, booleans as
// true/false, timestamps in RFC 3339, byte arrays as text when they are
// UTF-8 and in base64 otherwise, and tables and arrays (such as x-death) as
// JSON.
func HeaderString(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case []byte:
		if utf8.Valid(x) {
			return string(x)
		}
		return base64.StdEncoding.EncodeToString(x)
	case bool:
		return strconv.FormatBool(x)
	case float32:
		return strconv.FormatFloat(float64(x), 'g', -1, 32)
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	case amqp091.Decimal:
		return decimalText(x)
	case time.Time:
		return x.UTC().Format(time.RFC3339)
	case amqp091.Table, []any:
		b, err := json.Marshal(jsonable(x))
		if err != nil {
			return fmt.Sprint(x)
		}
		return string(b)
	}
	if n, err := integer(v); err == nil {
		return strconv.FormatInt(n, 10)
	}
	return fmt.Sprint(v)
}

// jsonable converts a nested header value into JSON-friendly values: byte
// arrays become strings like at the top level, timestamps RFC 3339.
func jsonable(v any) any {
	switch x := v.(type) {
	case amqp091.Table:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = jsonable(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = jsonable(e)
		}
		return out
	case []byte, time.Time, amqp091.Decimal:
		return HeaderString(x)
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return HeaderString(x)
		}
	case float32:
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return HeaderString(x)
		}
	}
	return v
}

func decimalText(d amqp091.Decimal) string {
	s := strconv.FormatInt(int64(d.Value), 10)
	if d.Scale == 0 {
		return s
	}
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for len(s) <= int(d.Scale) {
		s = "0" + s
	}
	s = s[:len(s)-int(d.Scale)] + "." + s[len(s)-int(d.Scale):]
	if neg {
		s = "-" + s
	}
	return s
}

// truncate shortens untrusted text for logs and errors.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// redactURL returns u without its password, for logs and errors.
func redactURL(u string) string {
	parsed, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	return parsed.Redacted()
}

func validURI(u string) bool {
	_, err := amqp091.ParseURI(u)
	return err == nil
}
