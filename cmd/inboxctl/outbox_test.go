package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/inboxkit/inbox"
)

// deadOutgoing enqueues n messages and has them refused for good, as a
// relay would after a return.
func (e *env) deadOutgoing(ob *inbox.Outbox, n int) {
	e.t.Helper()
	for i := 0; i < n; i++ {
		if _, err := ob.Send(e.ctx, inbox.OutgoingMessage{ID: fmt.Sprintf("out-%d", i), RoutingKey: "nowhere", Type: "shipment.requested", Body: []byte(`{"secret":"body"}`)}); err != nil {
			e.t.Fatal(err)
		}
	}
	c, err := ob.Claim(e.ctx, n)
	if err != nil {
		e.t.Fatal(err)
	}
	var failed []inbox.OutboxFailure
	for _, m := range c.Messages {
		failed = append(failed, inbox.OutboxFailure{RowID: m.RowID, Dead: true, Err: errors.New("unroutable: NO_ROUTE")})
	}
	if err := c.Settle(e.ctx, nil, failed); err != nil {
		e.t.Fatal(err)
	}
}

func TestOutboxCommands(t *testing.T) {
	e := newEnv(t)
	ob, err := inbox.NewOutbox(e.pool, inbox.OutboxConfig{Schema: e.schema})
	if err != nil {
		t.Fatal(err)
	}
	e.deadOutgoing(ob, 3)

	ctl(t, e.schema, "outbox").want(t, 2, "outbox needs stats, list, retry or delete")
	ctl(t, e.schema, "outbox", "list", "--state", "lost").want(t, 2, "not dead, pending, sent or all")
	ctl(t, e.schema, "outbox", "retry").want(t, 2, "needs message IDs")
	ctl(t, e.schema, "outbox", "delete", "--all").want(t, 2, "add --yes", "nothing was deleted")

	list := ctl(t, e.schema, "outbox", "list")
	list.want(t, 0, "out-0", "out-2", "NO_ROUTE", "nowhere")
	if want := "secret"; strings.Contains(list.stdout, want) {
		t.Fatalf("list printed a body:\n%s", list.stdout)
	}
	var rows []outboxJSON
	ctl(t, e.schema, "outbox", "list", "--json").json(t, &rows)
	if len(rows) != 3 || rows[0].State != "dead" || rows[0].BodyBytes == 0 {
		t.Fatalf("list --json = %+v", rows)
	}
	var stats struct{ Dead, Pending int64 }
	ctl(t, e.schema, "outbox", "stats", "--json").json(t, &stats)
	if stats.Dead != 3 || stats.Pending != 0 {
		t.Fatalf("stats --json = %v", stats)
	}

	first := strconv.FormatInt(rows[0].ID, 10)
	ctl(t, e.schema, "outbox", "retry", first).want(t, 0, "retried 1 dead outgoing messages")
	ctl(t, e.schema, "outbox", "retry", first).want(t, 1, "not dead, or do not exist")
	ctl(t, e.schema, "outbox", "list", "--state", "pending").want(t, 0, "out-0")
	ctl(t, e.schema, "outbox", "stats").want(t, 0, "PENDING", "DEAD")
	ctl(t, e.schema, "outbox", "delete", "--all", "--yes").want(t, 0, "deleted 2 dead outgoing messages")
	ctl(t, e.schema, "outbox", "list").want(t, 0, "no dead outgoing messages")
	ctl(t, e.schema, "outbox", "list", "--state", "all", "--json").json(t, &rows)
	if len(rows) != 1 || rows[0].MessageID != "out-0" || rows[0].State != "pending" {
		t.Fatalf("after retry and delete: %+v", rows)
	}
}
