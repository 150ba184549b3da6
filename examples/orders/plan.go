package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/inboxkit/inbox"
)

// plan is what the publisher sends, in two rounds, and what the example
// therefore expects. It is made from a seed, so a run can be repeated.
type plan struct {
	orders int
	rounds [2][]delivery
	events []inbox.Message // every distinct event, order by order
}

// delivery is one publication. A duplicate re-sends an event already sent
// (same message ID), as a publisher that retries after a lost confirm does.
type delivery struct {
	msg       inbox.Message
	duplicate bool
}

// newPlan spreads the 3 events of n orders over two rounds at random,
// shuffles each round (so events often come before the ones they follow),
// and adds dups duplicates: half re-sent within round 1, half re-sent in
// round 2 after their first copy has been handled.
func newPlan(n, dups int, seed uint64) *plan {
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	p := &plan{orders: n}
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("order-%02d", i)
		amount := int64(500 + rng.IntN(20000))
		bodies := []any{
			OrderCreated{OrderID: id, Customer: customers[rng.IntN(len(customers))], AmountCents: amount},
			OrderPaid{OrderID: id, AmountCents: amount},
			OrderShipped{OrderID: id, Tracking: fmt.Sprintf("TRK%06d", rng.IntN(1000000))},
		}
		for j, body := range bodies {
			b, err := json.Marshal(body)
			if err != nil {
				panic(err) // plain structs always marshal
			}
			p.events = append(p.events, inbox.Message{
				ID:     fmt.Sprintf("%s/%s", id, topics[j]),
				Topic:  topics[j],
				Stream: id,
				Seq:    int64(j + 1),
				Body:   b,
			})
		}
	}
	for _, e := range p.events {
		r := rng.IntN(2)
		p.rounds[r] = append(p.rounds[r], delivery{msg: e})
	}
	first := slices.Clone(p.rounds[0])
	for i := range dups {
		d := first[rng.IntN(len(first))]
		d.duplicate = true
		p.rounds[i%2] = append(p.rounds[i%2], d)
	}
	for r := range p.rounds {
		rng.Shuffle(len(p.rounds[r]), func(i, j int) { p.rounds[r][i], p.rounds[r][j] = p.rounds[r][j], p.rounds[r][i] })
	}
	return p
}

var customers = []string{"Ada", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia"}

// deliveries counts the publications of the given rounds, and the
// duplicates among them.
func (p *plan) deliveries(rounds ...int) (total, dups int) {
	for _, r := range rounds {
		for _, d := range p.rounds[r] {
			total++
			if d.duplicate {
				dups++
			}
		}
	}
	return total, dups
}

// distinct counts the distinct events sent in the given rounds and before.
func (p *plan) distinct(upTo int) int {
	seen := map[string]bool{}
	for r := 0; r <= upTo; r++ {
		for _, d := range p.rounds[r] {
			seen[d.msg.ID] = true
		}
	}
	return len(seen)
}

// readyAfterRound1 counts the events of round 1 that can be handled at
// once: those whose earlier events of the same order came in round 1 too.
// The others wait for round 2.
func (p *plan) readyAfterRound1() (ready int, waiting []held) {
	have := map[string]map[int64]inbox.Message{}
	for _, d := range p.rounds[0] {
		if have[d.msg.Stream] == nil {
			have[d.msg.Stream] = map[int64]inbox.Message{}
		}
		have[d.msg.Stream][d.msg.Seq] = d.msg
	}
	for _, e := range p.events {
		if e.Seq != 1 {
			continue
		}
		events := have[e.Stream]
		next := int64(1)
		for ; events[next].ID != ""; next++ {
			ready++
		}
		for seq := next + 1; seq <= int64(len(topics)); seq++ {
			if m := events[seq]; m.ID != "" {
				waiting = append(waiting, held{msg: m, missing: missingBefore(events, seq)})
			}
		}
	}
	return ready, waiting
}

// held is an event that has to wait for missing ones of its order.
type held struct {
	msg     inbox.Message
	missing []string // topics of the earlier events not there yet
}

func missingBefore(events map[int64]inbox.Message, seq int64) []string {
	var out []string
	for s := int64(1); s < seq; s++ {
		if events[s].ID == "" {
			out = append(out, shortTopic(topics[s-1]))
		}
	}
	return out
}

// arrivalOrder is the order in which each order's events were first sent,
// as topics, by order ID.
func (p *plan) arrivalOrder() map[string][]string {
	out := map[string][]string{}
	for _, round := range p.rounds {
		for _, d := range round {
			if !d.duplicate {
				out[d.msg.Stream] = append(out[d.msg.Stream], shortTopic(d.msg.Topic))
			}
		}
	}
	return out
}

// shortTopic is "paid" for "order.paid".
func shortTopic(topic string) string {
	for i := range topic {
		if topic[i] == '.' {
			return topic[i+1:]
		}
	}
	return topic
}
