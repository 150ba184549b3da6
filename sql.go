package inbox

import (
	"strings"

	"github.com/inboxkit/inbox/internal/sqlident"
)

// queries holds every statement of an Inbox, built once, with its schema
// filled in: only the schema, validated and quoted by internal/sqlident, is
// ever spliced into SQL text; everything else is a bound argument. The
// statements are grouped by concept, each group in a sql_*.go file.
type queries struct {
	storeQueries
	workerQueries
	streamQueries
	messageQueries
	headQueries
	stats  statsQueries
	listen string // wakeup.go
}

// The statements that name no table, fixed once and for all. (The
// savepoints live with their helpers, db.go and handlertx.go, and the
// claim's server-side limits with their explanation, limits.go.)
const (
	sqlNow       = "SELECT now()"
	sqlClock     = "SELECT clock_timestamp()" // the time now, not the transaction's start
	sqlNoJIT     = "SET LOCAL jit = off"
	sqlTryLock   = "SELECT pg_try_advisory_lock(hashtext($1))"
	sqlUnlock    = "SELECT pg_advisory_unlock(hashtext($1))"
	sqlBothExist = "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL"
)

func newQueries(schema string) queries {
	r := strings.NewReplacer("{schema}", sqlident.Quote(schema))
	return queries{
		storeQueries:   newStoreQueries(r),
		workerQueries:  newWorkerQueries(r),
		streamQueries:  newStreamQueries(r),
		messageQueries: newMessageQueries(r),
		headQueries:    newHeadQueries(r),
		stats:          newStatsQueries(r),
		listen:         "LISTEN " + sqlident.Quote(channelName("inbox_", schema)),
	}
}
