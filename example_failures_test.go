package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/inboxkit/inbox"
)

// A handler says what a failure means by what it returns: a plain error is
// retried with backoff, RetryAfter picks the delay, Permanent gives up at
// once. A message that is given up on is dead: kept, visible and
// replayable.
func ExamplePermanent() {
	ctx := context.Background()
	in, _, done := newExample(inbox.Config{PollInterval: 50 * time.Millisecond, Logger: quiet})
	defer done()
	ok := make(chan string)
	in.Handle("refund", func(ctx context.Context, tx pgx.Tx, msg *inbox.Message) error {
		switch {
		case len(msg.Body) == 0:
			return inbox.Permanent(errors.New("empty refund"))
		case msg.Attempt == 1:
			return inbox.RetryAfter(10*time.Millisecond, errors.New("payment service busy"))
		}
		ok <- fmt.Sprintf("%s done at attempt %d", msg.ID, msg.Attempt)
		return nil
	})
	if _, err := in.Store(ctx,
		inbox.Message{ID: "r-1", Topic: "refund", Body: []byte(`{"cents": 500}`)},
		inbox.Message{ID: "r-2", Topic: "refund"},
	); err != nil {
		fmt.Println(err)
		return
	}
	if err := in.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	defer in.Stop(ctx)
	fmt.Println(<-ok)

	dead := waitState(ctx, in, inbox.StateDead, 1)
	for _, m := range dead {
		fmt.Printf("%s is %s after %d attempt: %s\n", m.ID, m.State, m.Attempts, m.LastError)
	}
	// Output:
	// r-1 done at attempt 2
	// r-2 is dead after 1 attempt: permanent: empty refund
}

// After the cause of dead messages is fixed (a bug, a missing row), an
// operator or a program requeues them with a fresh attempt count.
func ExampleInbox_RetryDeadMessages() {
	ctx := context.Background()
	in, _, done := newExample(inbox.Config{PollInterval: 50 * time.Millisecond, Logger: quiet})
	defer done()
	fixed := make(chan struct{})
	handled := make(chan string)
	in.Handle("invoice", func(ctx context.Context, tx pgx.Tx, msg *inbox.Message) error {
		select {
		case <-fixed:
			handled <- msg.ID
			return nil
		default:
			return inbox.Permanent(errors.New("customer unknown"))
		}
	})
	if _, err := in.Store(ctx, inbox.Message{ID: "inv-1", Topic: "invoice"}); err != nil {
		fmt.Println(err)
		return
	}
	if err := in.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	defer in.Stop(ctx)
	waitState(ctx, in, inbox.StateDead, 1)

	close(fixed) // the missing customer has been imported
	n, err := in.RetryDeadMessages(ctx, inbox.MessageFilter{ErrorContains: "customer unknown"})
	fmt.Println("requeued", n, err)
	fmt.Println("handled", <-handled)
	// Output:
	// requeued 1 <nil>
	// handled inv-1
}

// A stream whose next sequence number is missing waits for it (a gap);
// Config.GapPolicy says what happens after Config.GapTimeout. An operator
// can also move it on by hand.
func ExampleInbox_SkipStream() {
	ctx := context.Background()
	in, _, done := newExample(inbox.Config{PollInterval: 50 * time.Millisecond, Logger: quiet})
	defer done()
	handled := make(chan int64)
	in.Handle("reading", func(ctx context.Context, tx pgx.Tx, msg *inbox.Message) error {
		handled <- msg.Seq
		return nil
	})
	if _, err := in.Store(ctx,
		inbox.Message{ID: "r-1", Topic: "reading", Stream: "sensor-9", Seq: 1},
		inbox.Message{ID: "r-3", Topic: "reading", Stream: "sensor-9", Seq: 3}, // 2 never comes
	); err != nil {
		fmt.Println(err)
		return
	}
	if err := in.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	defer in.Stop(ctx)
	fmt.Println("handled", <-handled)

	streams := waitStreams(ctx, in, inbox.StreamFilter{Gap: true})
	for _, s := range streams {
		fmt.Printf("%s waits for %d, has %d pending from %d\n", s.Stream, s.NextSeq, s.Pending, s.HeadSeq)
	}
	if _, err := in.SkipStream(ctx, "", "sensor-9"); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("handled", <-handled)
	// Output:
	// handled 1
	// sensor-9 waits for 2, has 1 pending from 3
	// handled 3
}

// Middleware wraps every handler, for logging, metrics or tracing.
func ExampleChain() {
	timing := func(next inbox.Handler) inbox.Handler {
		return func(ctx context.Context, tx pgx.Tx, msg *inbox.Message) error {
			start := time.Now()
			err := next(ctx, tx, msg)
			slog.DebugContext(ctx, "handled", "topic", msg.Topic, "id", msg.ID, "took", time.Since(start), "error", err)
			return err
		}
	}
	greet := func(ctx context.Context, tx pgx.Tx, msg *inbox.Message) error {
		fmt.Println("hello,", string(msg.Body))
		return nil
	}

	h := inbox.Chain(greet, timing)
	_ = h(context.Background(), nil, &inbox.Message{ID: "m-1", Topic: "greeting", Body: []byte("Ada")})
	// In a service: inbox.Config{Middleware: []inbox.Middleware{timing}},
	// or in.Handle("greeting", greet, timing).
	// Output:
	// hello, Ada
}
