package inbox

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// claim is what one transaction holds: a suspect alone (see attempts.go),
// or else a batch of unordered messages and of streams.
type claim struct {
	unordered []*Message
	streams   []*streamWork
	starts    starts
	// dbNow is the database's clock at claim time and claimedAt the local
	// clock at the same moment, for latencies measured on the database's
	// clock (received_at is set by it).
	dbNow, claimedAt time.Time
}

// size counts the claimed messages.
func (c *claim) size() int {
	n := len(c.unordered)
	for _, s := range c.streams {
		n += len(s.msgs)
	}
	return n
}

// claim locks what one transaction works on. The same round trip sets the
// claim's server-side limits and the planning of its statements (see
// limits.go) and, when the pacer says so
// (suspects.go), tries the suspect claims first: when one takes a suspect,
// the normal claims that follow take nothing.
func (e *engine) claim(ctx context.Context, tx pgx.Tx, topics []string) (*claim, error) {
	now := time.Now()
	look := e.suspects.due(now)
	b := &pgx.Batch{}
	b.Queue(setClaimLimits, e.cfg.claimLimitArg())
	b.Queue(claimPlanning)
	if look {
		b.Queue(e.sql.claimSuspect, topics)
		b.Queue(e.sql.claimSuspectStream, topics)
	}
	floors, fromStart := e.floors.forClaim(now, topics)
	b.Queue(e.sql.claimUnordered, e.cfg.BatchSize, topics, floors)
	b.Queue(e.sql.claimStreams, e.cfg.StreamsPerClaim, topics)
	b.Queue(handlerPlanning)
	b.Queue(sqlClock)
	br := tx.SendBatch(ctx, b)
	c := &claim{}
	_, err := br.Exec()
	if err == nil {
		_, err = br.Exec()
	}
	var suspects []*Message
	var suspectStreams []*streamWork
	var deaths []int
	oldest := map[string]time.Time{} // per topic, of the unordered messages returned
	if err == nil && look {
		var rows pgx.Rows
		if rows, err = br.Query(); err == nil {
			suspects, err = pgx.CollectRows(rows, scanSuspect)
		}
	}
	if err == nil && look {
		var rows pgx.Rows
		if rows, err = br.Query(); err == nil {
			var s streamWork
			var d int
			var flag bool
			_, err = pgx.ForEachRow(rows, []any{&s.source, &s.stream, &s.nextSeq, &s.inGap, &d, &flag}, func() error {
				w := s
				suspectStreams = append(suspectStreams, &w)
				deaths = append(deaths, d)
				return nil
			})
		}
	}
	if err == nil {
		var rows pgx.Rows
		if rows, err = br.Query(); err == nil {
			c.unordered, err = collectUnordered(rows, oldest)
		}
	}
	if err == nil {
		c.streams, err = collectStreams(br)
	}
	if err == nil {
		_, err = br.Exec()
	}
	if err == nil {
		err = br.QueryRow().Scan(&c.dbNow)
		c.claimedAt = time.Now()
	}
	if closeErr := br.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		return nil, fmt.Errorf("claim messages: %w", err)
	}
	if look {
		e.suspects.wait(now, suspectWait(len(suspects)+len(suspectStreams) > 0))
	}
	e.floors.claimed(oldest, fromStart, now)
	c.starts.until = c.claimedAt.Add(e.cfg.BatchBudget)
	if len(suspects)+len(suspectStreams) > 0 {
		c.starts.solo = true
		c.starts.deaths = map[int64]int{}
		c.unordered, c.streams = suspects, suspectStreams
		for _, m := range suspects {
			c.starts.deaths[m.RowID] = m.deaths
		}
	}
	if err := e.loadStreams(ctx, tx, c.streams); err != nil {
		return nil, err
	}
	for i, s := range suspectStreams {
		for _, m := range s.msgs {
			if m.Seq == s.nextSeq {
				m.deaths = deaths[i]
				c.starts.deaths[m.RowID] = deaths[i]
			}
		}
	}
	return c, nil
}

// collectUnordered reads the rows of claimUnordered and notes, per topic,
// the run_at of the oldest in oldest.
func collectUnordered(rows pgx.Rows, oldest map[string]time.Time) ([]*Message, error) {
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (*Message, error) {
		m := &Message{}
		var headers map[string]string
		var runAt time.Time
		err := row.Scan(&m.RowID, &m.Source, &m.ID, &m.Topic, &headers, &m.Body, &m.Attempt, &m.ReceivedAt, &runAt)
		m.Headers = headers
		m.Attempt++
		if at, ok := oldest[m.Topic]; err == nil && (!ok || runAt.Before(at)) {
			oldest[m.Topic] = runAt
		}
		return m, err
	})
}

// scanSuspect reads a row of claimSuspect.
func scanSuspect(row pgx.CollectableRow) (*Message, error) {
	m := &Message{}
	var headers map[string]string
	var flag bool
	err := row.Scan(&m.RowID, &m.Source, &m.ID, &m.Topic, &headers, &m.Body, &m.Attempt, &m.ReceivedAt, &m.deaths, &flag)
	m.Headers = headers
	m.Attempt++
	return m, err
}

func collectStreams(br pgx.BatchResults) ([]*streamWork, error) {
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	var out []*streamWork
	seen := map[[2]string]bool{}
	var s streamWork
	_, err = pgx.ForEachRow(rows, []any{&s.source, &s.stream, &s.nextSeq, &s.inGap}, func() error {
		// A stream may head the claim twice (a late duplicate at its
		// watermark); it is locked and worked once.
		k := [2]string{s.source, s.stream}
		if !seen[k] {
			seen[k] = true
			w := s
			out = append(out, &w)
		}
		return nil
	})
	return out, err
}

// loadStreams reads each claimed stream's next pending messages, in a
// statement that starts after the locks are held, so it sees everything the
// stream's previous holder committed.
func (e *engine) loadStreams(ctx context.Context, tx pgx.Tx, streams []*streamWork) error {
	if len(streams) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	b.Queue(claimPlanning)
	for _, s := range streams {
		b.Queue(e.sql.loadStream, s.source, s.stream, e.cfg.StreamBatchSize, s.nextSeq)
	}
	b.Queue(handlerPlanning)
	br := tx.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return fmt.Errorf("load streams: %w", err)
	}
	for _, s := range streams {
		rows, err := br.Query()
		if err != nil {
			return fmt.Errorf("load stream %q: %w", s.stream, err)
		}
		s.msgs, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (*streamMessage, error) {
			m := &streamMessage{Message: &Message{Source: s.source, Stream: s.stream}}
			var headers map[string]string
			err := row.Scan(&m.RowID, &m.ID, &m.Topic, &m.Seq, &headers, &m.Body, &m.Attempt, &m.ReceivedAt, &m.ready,
				&m.outOfOrder, &m.late)
			m.Headers = headers
			m.Attempt++
			return m, err
		})
		if err != nil {
			return fmt.Errorf("load stream %q: %w", s.stream, err)
		}
	}
	return br.Close()
}

// candidates lists the messages of c whose handlers may run, in the order
// they would: every unordered one, and each stream's consecutive ready run
// from its watermark (only the head when the claim is solo).
func (c *claim) candidates(handled func(topic string) bool) []int64 {
	var ids []int64
	for _, m := range c.unordered {
		ids = append(ids, m.RowID)
	}
	for _, s := range c.streams {
		next := s.nextSeq
	stream:
		for _, m := range s.msgs {
			switch nextStep(m, next, handled) {
			case stepReplay:
				if !c.starts.solo {
					ids = append(ids, m.RowID)
				}
			case stepPass, stepDuplicate, stepLate:
			case stepRun:
				ids = append(ids, m.RowID)
				next++
				if c.starts.solo {
					break stream
				}
			default:
				break stream
			}
		}
	}
	return ids
}
