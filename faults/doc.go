// Package faults is the inbox's fault-injection suite: its tests run a
// consumer process (cmd/ledger-consumer) against the real RabbitMQ and
// PostgreSQL, publish a known ledger of messages with publisher confirms,
// inject faults (SIGKILL, SIGTERM, closed broker connections, terminated
// database backends, failing handlers, malformed messages, a deleted queue,
// and with FAULTS_RESTARTS set restarts of the PostgreSQL server and the
// broker) and check from the database and the broker that every confirmed
// message was applied exactly once, in stream order, and that nothing is
// left behind. The chained cases run the ledger on through the transactional
// outbox: a relay process (cmd/ledger-relay) publishes the consumer's
// follow-ups to a second inbox, and the relay is killed, cut off from the
// broker and from the database. See docs/faults.md.
//
// The package has no API; it holds only the tests and the consumer and
// relay commands.
package faults
