// Package inboxtest helps a service's own tests run against a real inbox:
// a PostgreSQL and a RabbitMQ to talk to, an isolated, migrated schema per
// test, a way to publish test messages and a way to wait until they are
// handled.
//
// It is a module of its own (github.com/inboxkit/inbox/inboxtest) so that
// testcontainers-go and its Docker client stay out of the dependencies of
// services that only import the inbox.
//
// # Where the services come from
//
// [Postgres] and [RabbitMQ] return a URL:
//
//   - from INBOX_POSTGRES_URL and INBOX_AMQP_URL when they are set (a
//     developer machine or CI with the services running);
//   - otherwise from a container started with testcontainers-go, once per
//     test binary and shared by its tests. This needs a Docker engine (or a
//     compatible one, such as Podman with its Docker socket). The containers
//     live until the test binary exits; testcontainers' reaper (Ryuk)
//     removes them. Where the reaper is disabled, call [Main] from TestMain
//     to stop them.
//
// The images are [PostgresImage] and [RabbitMQImage].
//
// # A test
//
//	func TestOrderPaid(t *testing.T) {
//		env := inboxtest.Setup(t) // isolated schema, dropped at the end
//		in := env.NewInbox(inbox.Config{})
//		in.Handle("order.paid", markPaid)
//		inboxtest.Start(t, in) // stopped at the end
//
//		_, err := in.Store(ctx, inbox.Message{ID: "m1", Topic: "order.paid", Body: body})
//		...
//		env.WaitHandled(1, 10*time.Second)
//	}
//
// The pool of [Setup] has the test's schema first on its search_path, so a
// handler's unqualified table names (CREATE TABLE orders, INSERT INTO
// orders) land in the test's schema too, and every test runs in parallel
// with the others on one database.
//
// Through RabbitMQ, [NewQueue] declares a queue deleted when the test ends,
// [StartReceiver] runs the amqp package's receiver on it for the length of
// the test, [Publish] sends inbox messages the way that receiver reads them
// by default, and [PublishRaw] sends arbitrary AMQP messages (a missing
// message ID, a malformed sequence header) to test bad input.
package inboxtest
