package inbox

import (
	"time"

	"github.com/cenkalti/backoff/v4"
)

// retryDelay is the wait before attempt+1, from the attempt number alone:
// the count lives in the row, so any worker on any instance computes the
// same schedule, and no BackOff value is shared between goroutines.
func (c Config) retryDelay(attempt int) time.Duration {
	b := &backoff.ExponentialBackOff{
		InitialInterval:     c.RetryInitial,
		RandomizationFactor: c.RetryJitter,
		Multiplier:          2,
		MaxInterval:         c.RetryMax,
		Stop:                backoff.Stop,
		Clock:               backoff.SystemClock,
	}
	b.Reset()
	delay := c.RetryInitial
	// Past 64 doublings every interval is capped at RetryMax anyway.
	for i := 0; i < attempt && i < 64; i++ {
		delay = b.NextBackOff()
	}
	return delay
}
