package inbox

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// ActivityScan caps how many processed messages Activity counts (the most
// recently processed ones), so that it stays quick at high rates.
// Activity.Capped says when the cap was reached.
const ActivityScan = 200_000

// Activity is how many messages were processed in each recent minute.
type Activity struct {
	// TakenAt is the database's clock when it was read.
	TakenAt time.Time
	// Processed[i] counts the messages processed in the minute that ended
	// i minutes before TakenAt's minute began: Processed[0] is the
	// current, partial minute.
	Processed []int64
	// Capped is true when ActivityScan messages were counted: the oldest
	// minutes counted only part of theirs (or none).
	Capped bool
}

// Activity counts the messages processed in each of the last minutes
// (at most 24 hours), from the processed messages still kept (see
// Config.Retention).
func (in *Inbox) Activity(ctx context.Context, minutes int) (Activity, error) {
	minutes = min(max(minutes, 1), 24*60)
	rows, err := in.e.pool.Query(ctx, in.e.sql.activity, minutes, ActivityScan)
	if err != nil {
		return Activity{}, fmt.Errorf("inbox: activity: %w", err)
	}
	a := Activity{Processed: make([]int64, minutes)}
	var ago int
	var n, total int64
	_, err = pgx.ForEachRow(rows, []any{&a.TakenAt, &ago, &n, &total}, func() error {
		if ago >= 0 && ago < minutes {
			a.Processed[ago] = n
		}
		a.Capped = total >= ActivityScan
		return nil
	})
	if err != nil {
		return Activity{}, fmt.Errorf("inbox: activity: %w", err)
	}
	if a.TakenAt.IsZero() {
		if err := in.e.pool.QueryRow(ctx, sqlNow).Scan(&a.TakenAt); err != nil {
			return Activity{}, fmt.Errorf("inbox: activity: %w", err)
		}
	}
	return a, nil
}
