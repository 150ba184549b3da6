// Package faults is the inbox's fault-injection suite: its tests run a
// consumer process (cmd/ledger-consumer) against the real RabbitMQ and
// PostgreSQL, publish a known ledger of messages with publisher confirms,
// inject faults (SIGKILL, SIGTERM, closed broker connections, terminated
// database backends, failing handlers, malformed messages, a deleted queue,
// and with FAULTS_RESTARTS set restarts of the PostgreSQL server and the
// broker) and check from the database and the broker that every confirmed
// message was applied exactly once, in stream order, and that nothing is
// left behind. See docs/faults.md.
//
// The package has no API; it holds only the tests and the consumer command.
package faults
