package dashboard

import (
	"net/http"

	"github.com/inboxkit/inbox"
)

// overviewData is the overview page.
type overviewData struct {
	Stats          inbox.Stats
	Total          inbox.TopicStats
	Chart          chart
	ActivityCapped bool
	Parked, Gap    []inbox.StreamInfo
	MoreParked     bool
	MoreGap        bool
	Outbox         *inbox.OutboxStats // nil without Options.Outbox
}

// overviewStreams is how many parked and gap-waiting streams the overview
// lists; the streams page has them all.
const overviewStreams = 10

func (d *dashboard) overview(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := d.ctx(r)
	defer cancel()
	st, err := d.in.Stats(ctx)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	act, err := d.in.Activity(ctx, 60)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	data := overviewData{Stats: st, Total: st.Total(), ActivityCapped: act.Capped}
	d.backlog.record(st.TakenAt, data.Total.Pending())
	backlog, sampled := d.backlog.series(st.TakenAt)
	data.Chart = newChart(act.Processed, backlog, sampled)
	if data.Parked, err = d.in.PageStreams(ctx, inbox.StreamQuery{State: "parked", Limit: overviewStreams + 1}); err != nil {
		d.fail(w, r, err)
		return
	}
	if data.Gap, err = d.in.PageStreams(ctx, inbox.StreamQuery{State: "gap", Limit: overviewStreams + 1}); err != nil {
		d.fail(w, r, err)
		return
	}
	if d.opts.Outbox != nil {
		ob, err := d.opts.Outbox.Stats(ctx)
		if err != nil {
			d.fail(w, r, err)
			return
		}
		data.Outbox = &ob
	}
	data.Parked, data.MoreParked = firstN(data.Parked, overviewStreams)
	data.Gap, data.MoreGap = firstN(data.Gap, overviewStreams)
	d.render(w, r, http.StatusOK, "overview", "Overview", data)
}

// firstN cuts a list fetched with one extra row, reporting whether there
// was more.
func firstN[T any](list []T, n int) ([]T, bool) {
	if len(list) > n {
		return list[:n], true
	}
	return list, false
}
