package amqp

import (
	"fmt"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

func TestIsUndecodable(t *testing.T) {
	cases := []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("connection closed: %w", &amqp091.Error{Code: amqp091.FrameError, Reason: amqp091.ErrSyntax.Error()}), true},
		{fmt.Errorf("channel closed: %w", &amqp091.Error{Code: amqp091.FrameError, Reason: amqp091.ErrFrame.Error()}), true},
		// A lost or cut connection is not a decoding failure.
		{&amqp091.Error{Code: amqp091.FrameError, Reason: "EOF"}, false},
		{&amqp091.Error{Code: amqp091.FrameError, Reason: "read tcp 127.0.0.1:1->127.0.0.1:5672: use of closed network connection"}, false},
		// The broker failing to decode what the receiver sent is another matter.
		{&amqp091.Error{Code: amqp091.FrameError, Reason: amqp091.ErrSyntax.Error(), Server: true}, false},
		{&amqp091.Error{Code: amqp091.ConnectionForced, Reason: "CONNECTION_FORCED"}, false},
		{nil, false},
	}
	for _, c := range cases {
		if got := isUndecodable(c.err); got != c.want {
			t.Errorf("isUndecodable(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
