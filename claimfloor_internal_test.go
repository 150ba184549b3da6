package inbox

import (
	"testing"
	"time"
)

// TestFailedResetClaimLeavesTheResetDue: a claim from the beginning that
// fails sets no floors, so the next claim starts from the beginning too,
// not from floors a second older than they should be; a claim from the
// beginning that succeeds puts the next reset an interval later.
func TestFailedResetClaimLeavesTheResetDue(t *testing.T) {
	var f claimFloors
	topics := []string{"a"}
	now := time.Now()
	if _, reset := f.forClaim(now, topics); !reset {
		t.Fatal("the first claim starts at a floor; want it to start from the beginning")
	}
	// That claim fails: it records nothing.
	if _, reset := f.forClaim(now.Add(time.Millisecond), topics); !reset {
		t.Fatal("the claim after a failed claim from the beginning starts at the floors; want it from the beginning")
	}
	f.claimed(map[string]time.Time{"a": now.Add(-time.Minute)}, true, now.Add(time.Millisecond))
	floors, reset := f.forClaim(now.Add(2*time.Millisecond), topics)
	if reset || !floors[0].Equal(now.Add(-time.Minute-floorMargin)) {
		t.Fatalf("after a claim from the beginning: floor %v, from the beginning %v; want floor %v",
			floors[0], reset, now.Add(-time.Minute-floorMargin))
	}
	if _, reset := f.forClaim(now.Add(time.Millisecond+floorResetInterval), topics); !reset {
		t.Fatal("a reset interval after the last claim from the beginning, the claim starts at the floors; want it from the beginning")
	}
}
