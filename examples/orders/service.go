package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/amqp"
)

// service is the consumer: the inbox with its handlers and workers, fed by
// the receiver from the queue. This is the part a real service has.
type service struct {
	in     *inbox.Inbox
	rcv    *amqp.Receiver
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// serve starts the inbox's workers and the receiver.
func serve(ctx context.Context, cfg config, pool *pgxpool.Pool, name string, s *store) (*service, error) {
	in, err := inbox.New(pool, inbox.Config{
		Schema:  name,
		Workers: workers,
		Logger:  cfg.logger,
	})
	if err != nil {
		return nil, err
	}
	s.register(in)
	rcv, err := amqp.NewReceiver(in, amqp.Config{
		URL:      cfg.amqpURL,
		Queue:    name,
		Topology: topology(name), // redeclared on every reconnect
		Logger:   cfg.logger,
	})
	if err != nil {
		return nil, err
	}
	if err := in.Start(ctx); err != nil {
		return nil, err
	}
	// The receiver runs until stop; it acks what it has stored and leaves
	// the rest for the broker to redeliver.
	rctx, cancel := context.WithCancel(context.Background())
	svc := &service{in: in, rcv: rcv, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(svc.done)
		if err := rcv.Run(rctx); err != nil {
			cfg.logger.Error("receiver", "error", err)
		}
	}()
	return svc, nil
}

// topology is the queue, with a dead-letter exchange and queue (name.dead)
// for the deliveries the receiver rejects.
func topology(name string) *amqp.Topology {
	return &amqp.Topology{Queue: name}
}

// stop stops the receiver, then the workers, waiting for both.
func (s *service) stop() {
	s.once.Do(func() {
		s.cancel()
		<-s.done
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = s.in.Stop(ctx)
	})
}

// waitSettled waits until the receiver has acked or rejected n deliveries.
func (s *service) waitSettled(ctx context.Context, n int) error {
	for {
		st := s.rcv.Stats()
		if int(st.Acked+st.RejectedTotal()) >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the receiver settled %d of %d deliveries: %w", st.Acked+st.RejectedTotal(), n, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// publishing is how the upstream service sends an event: the message ID as
// message_id (the dedup key), the topic as type, and the order ID and
// event number in the headers the receiver reads by default.
func publishing(d delivery) amqp091.Publishing {
	p := amqp091.Publishing{
		MessageId:    d.msg.ID,
		Type:         d.msg.Topic,
		ContentType:  "application/json",
		DeliveryMode: amqp091.Persistent,
		Body:         d.msg.Body,
	}
	// Only an ordered event carries the stream headers: an empty stream key
	// beside a sequence number is rejected as a bad stream key.
	if d.msg.Stream != "" {
		p.Headers = amqp091.Table{
			amqp.DefaultStreamHeader:   d.msg.Stream,
			amqp.DefaultSequenceHeader: d.msg.Seq,
		}
	}
	return p
}
