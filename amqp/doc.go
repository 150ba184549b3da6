// Package amqp receives messages from a RabbitMQ queue into the inbox: it
// stores each delivery as an inbox row and acks it only once that row is
// committed. Handlers then run from the inbox, not from the queue, so slow
// business code never holds deliveries unacked.
//
// # Quick start
//
//	in, err := inbox.New(pool, inbox.Config{Schema: "inbox"})
//	// ...
//	in.Handle("order.created", handleOrderCreated)
//	if err := in.Start(ctx); err != nil { ... }
//	defer in.Stop(context.Background())
//
//	rcv, err := amqp.NewReceiver(in, amqp.Config{
//		URL:      os.Getenv("AMQP_URL"),
//		Queue:    "orders",
//		Topology: &amqp.Topology{Exchange: "shop", RoutingKeys: []string{"order.*"}},
//	})
//	if err != nil { ... }
//	err = rcv.Run(ctx) // until ctx is cancelled
//
// A Receiver needs only a [Store], which *inbox.Inbox satisfies. When the
// receiver and the workers share one Inbox, each stored batch wakes the
// workers at once; otherwise they learn of it by LISTEN/NOTIFY or polling.
//
// # Guarantees
//
// Nothing is lost: a delivery is acked only after the statement that stored
// it (or found it already stored) has committed. A failed store acks
// nothing; the receiver retries it with backoff while its channel lives, and
// when the channel dies the broker redelivers. A store whose commit outcome
// is unknown (connection lost during COMMIT) is treated as failed: the retry
// or the redelivery finds the row and acks it as a duplicate.
//
// Nothing is stored twice: deliveries are deduplicated by (Source, message
// ID), and messages of a stream by sequence number below the stream's
// watermark. Redeliveries after a lost ack, publisher retries and duplicate
// publishes are all acked without a second row.
//
// Batches are stored concurrently, up to [Config.BatchesInFlight] at once,
// each Store call on a goroutine of its own, so the next batch is gathered
// while earlier ones commit. A full batch goes at once; one that is not
// full goes after [Config.BatchLinger] if no other batch is out, and
// otherwise when the store under way returns (group commit: a busy
// receiver stores fewer, larger batches, whose cost to the database is
// mostly per statement and per commit). Acks go out strictly in delivery-tag order: a
// batch is acked only once it and every batch before it have committed, so
// a batch whose store fails holds back the acks of every later batch until
// its retry succeeds, and never lets them cover its own deliveries. One
// goroutine (the one running [Receiver.Run]) makes every call on the
// channel, which is what makes acking with one multiple ack safe; a
// rejected delivery is settled on its own before any ack covers its tag.
//
// A delivery tag is acked only on the channel that delivered it. Every batch
// in flight belongs to one broker session (connection and channel) and is
// dropped with it, unacked, so a tag is never acked on a later channel, where
// tag numbers start again at 1 and mean other deliveries. A batch that was
// committed but not yet acked when its session ended comes back as
// duplicates.
//
// # Mapping deliveries to messages
//
//   - ID: the message_id property, or [Config.MessageID].
//   - Topic: the type property, else the routing key; see [TopicFrom].
//   - Stream and Seq: from the headers named by [Config.StreamHeader]
//     (default "x-stream-key") and [Config.SequenceHeader] (default
//     "x-sequence"). The sequence may be any AMQP integer type, an integral
//     float (up to 2^53) or decimal, or a string of decimal digits; see
//     [ParseSequence]. A sequence without a stream header is ignored; with
//     a stream header that is empty or void, the delivery is rejected
//     ([ReasonBadStream]), since its publisher meant it to be ordered.
//   - Headers: every application header, rendered by [HeaderString] (so a
//     W3C traceparent and tracestate are kept as they are), plus the AMQP
//     properties as amqp-exchange, amqp-routing-key, amqp-content-type and
//     the other Header constants.
//   - Source: [Config.Source], by default the queue name.
//
// # Bad input
//
// A delivery that cannot become a valid message is dead-lettered: a missing
// message ID, an ID or stream key too long, an unparsable, negative or
// missing sequence number, a stream key of the wrong type or empty beside a
// sequence number, headers over [Config.MaxHeaderBytes], a body over the
// inbox's MaxBodyBytes, or a topic without a handler when the inbox has
// StrictTopics. The receiver publishes a copy, whole, to the dead-letter
// exchange ([Config.DeadLetterExchange], Topology's by default) with the
// reason in [HeaderRejectReason] and [HeaderRejectDetail] and where it came
// from in [HeaderRejectQueue], [HeaderRejectExchange] and
// [HeaderRejectRoutingKey], and acks the delivery once the broker has
// confirmed the copy. If the copy cannot be published (no such exchange, no
// queue bound, no confirm), or no dead-letter exchange is configured, the
// delivery is rejected without requeue and the broker dead-letters it with
// only an x-death header whose reason is "rejected". A channel lost between
// the confirm and the ack leaves a second copy in the dead-letter queue
// after the redelivery: never none. Each rejection is logged with its reason
// and message ID (never the body) and counted in [Stats].Rejected. Bad input
// never stops the receiver and never holds up the deliveries behind it.
// Without a dead-letter exchange on the queue the broker drops rejected
// messages: declare one, for example with [Topology].
//
// # Deliveries that cannot be decoded
//
// RabbitMQ accepts header tables nested deeper than amqp091-go decodes (32
// levels). Such a delivery kills the connection ("invalid field or value
// inside of a frame") before the receiver sees it, so it cannot be rejected:
// it goes back to the head of the queue. Only the broker can remove it, by
// a delivery limit: the quorum queues [Topology] declares have
// x-delivery-limit [DefaultDeliveryLimit], and RabbitMQ counts each return,
// a lost connection included, then dead-letters the message (x-death reason
// "delivery_limit"; amqp091-go cannot read it either). The receiver
// recognises these sessions: it counts them in [Stats].Undecodable, warns on
// the first and logs an error with the remedy from the second in a row,
// reconnects without a growing wait, and takes one delivery at a time until
// the next ack, so that the deliveries behind the bad one are not returned
// (and counted) with it. On a queue without a delivery limit the queue stays
// blocked until an operator removes the message.
//
// # Reconnects
//
// The receiver does its own reconnecting; amqp091-go's automatic recovery
// must stay off ([Config.AMQP] Recovery nil). When the connection or channel
// closes (broker restart, network failure, rabbitmqctl close_connection),
// when the broker cancels the consumer (queue deleted, quorum leader moved),
// when a delivery cannot be decoded (see above) or when the deliveries
// channel ends, the session ends. After a consumer
// cancel the batches in flight and the batch in hand are still stored and
// acked on the open channel; when the channel itself is gone they are
// dropped unacked and the broker redelivers them (a store attempt under way
// is left to finish first, within [Config.StoreTimeout], so that its commit
// is not made one of unknown outcome). A new session starts
// after an exponential backoff from [Config.ReconnectInitial] up to
// [Config.ReconnectMax], reset after a session that acked something. Each
// step of opening a session is bounded by [Config.OpenTimeout]. A missing
// queue is logged as an error on every attempt, at the capped pace; with
// [Config.Topology] set, each session declares the topology first, so a
// deleted queue comes back.
//
// # Stopping
//
// Cancel the context given to [Receiver.Run]. The receiver stores the batches
// in flight and the batch in hand and acks them in order, within
// [Config.ShutdownTimeout]: store attempts still running then are cancelled
// and their deliveries, with every later one, stay unacked. It closes the
// connection so the broker requeues what is unacked, and returns.
//
// # Operations
//
//   - Prefetch bounds the deliveries in flight; keep it at least
//     BatchesInFlight plus one batches, so the broker fills the next batch
//     while the others are stored.
//   - Each batch in flight holds a connection of the Store's pool while it
//     is stored: give the pool [Config.BatchesInFlight] connections for the
//     receiver, on top of the workers', or a pool of its own.
//   - RabbitMQ closes a channel whose delivery stays unacked past its
//     consumer_timeout (30 minutes by default). The receiver holds
//     deliveries only while it stores them, but a database outage longer
//     than that ends the session; nothing is lost, the broker redelivers.
//   - [Receiver.Stats] counts deliveries received, stored, duplicates,
//     acked, rejected by reason, failed store attempts, reconnects and
//     sessions killed by an undecodable delivery.
//   - Every return of an unacked delivery counts towards a quorum queue's
//     delivery limit: a lost connection, a receiver stopped with deliveries
//     in flight. The receiver acks within milliseconds, so only a message
//     returned [DefaultDeliveryLimit] times in a row (a database outage with
//     that many broker disconnects, say) is dead-lettered without being
//     stored; it is in the dead-letter queue, to be published again.
//   - Logs go to [Config.Logger] with the URL's password redacted.
//
// # What the receiver does not do
//
// It does not publish (the Relay does, below), does not run handlers (the inbox does), and does not
// order deliveries: RabbitMQ keeps a single queue's order, but redeliveries
// and several consumers reorder. Ordering is restored by the inbox from the
// stream and sequence headers.
//
// # Relay: publishing the outbox
//
// [Relay] publishes the messages of an inbox.Outbox. Each claim (up to
// [RelayConfig.BatchSize] messages, at most one per stream) is published on
// a channel in confirm mode with the mandatory flag; a message is marked
// sent only after its basic.ack, and only if no basic.return (unroutable)
// came for its message ID first. A returned message is dead with the
// reason; a nacked one is retried with backoff; one whose channel or
// connection was lost before its confirm, or whose confirm did not come
// within [RelayConfig.ConfirmTimeout], stays pending and is published again
// with the same ID. While a full batch's confirms come and its outcome is
// recorded, the relay claims and publishes the next batches (three batches in
// flight at most), so the broker and the database work at the same time;
// the open claim's row locks keep the next claim off its messages, and a
// stream's next message is claimable only once the previous one is marked
// sent, so per-stream order does not depend on it. After a channel error,
// the messages left unconfirmed are published one at a time, nothing else
// in flight, so that a message the broker refuses (a missing exchange,
// access refused) is charged with it and ends dead instead of failing the
// others. Several relays share an outbox through row locks (SKIP LOCKED). The relay reconnects with backoff like the receiver,
// wakes on the outbox's NOTIFY and polls as a backstop, deletes sent rows
// past their retention, and reports the outbox gauges while it runs.
// [Relay.Stats] counts publishes, confirms, returns, nacks, republished
// messages and reconnects.
package amqp
