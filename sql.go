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
	stats  statsQueries
	listen string // wakeup.go
}

func newQueries(schema string) queries {
	r := strings.NewReplacer("{schema}", sqlident.Quote(schema))
	return queries{
		storeQueries:   newStoreQueries(r),
		workerQueries:  newWorkerQueries(r),
		streamQueries:  newStreamQueries(r),
		messageQueries: newMessageQueries(r),
		stats:          newStatsQueries(r),
		listen:         "LISTEN " + sqlident.Quote(channelName(schema)),
	}
}
