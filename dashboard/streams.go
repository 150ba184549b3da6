package dashboard

import (
	"errors"
	"net/http"
	"net/url"

	"github.com/inboxkit/inbox"
)

type streamsData struct {
	Parked, Gap         []inbox.StreamInfo
	NextParked, NextGap url.Values // the next page's key, nil when none
	Deepest             []inbox.StreamInfo
	PendingLimit        int
	DeepScan            int
}

const streamPageSize = 50

func (d *dashboard) streamList(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := d.ctx(r)
	defer cancel()
	v := r.URL.Query()
	data := streamsData{PendingLimit: inbox.StreamPendingLimit, DeepScan: inbox.DeepestStreamScan}
	var err error
	page := func(state, src, str string) ([]inbox.StreamInfo, url.Values) {
		if err != nil {
			return nil, nil
		}
		var list []inbox.StreamInfo
		list, err = d.in.PageStreams(ctx, inbox.StreamQuery{
			State: state, AfterSource: v.Get(src), AfterStream: v.Get(str), Limit: streamPageSize + 1})
		list, more := firstN(list, streamPageSize)
		if !more {
			return list, nil
		}
		next := url.Values{}
		for k := range v {
			next.Set(k, v.Get(k))
		}
		last := list[len(list)-1]
		next.Set(src, last.Source)
		next.Set(str, last.Stream)
		return list, next
	}
	data.Parked, data.NextParked = page("parked", "parked_source", "parked_stream")
	data.Gap, data.NextGap = page("gap", "gap_source", "gap_stream")
	if err == nil {
		data.Deepest, err = d.in.DeepestStreams(ctx, 10)
	}
	if err != nil {
		d.fail(w, r, err)
		return
	}
	d.render(w, r, http.StatusOK, "streams", "Streams", data)
}

func (d *dashboard) stream(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := d.ctx(r)
	defer cancel()
	source, name := r.URL.Query().Get("source"), r.URL.Query().Get("stream")
	if name == "" {
		d.fail(w, r, badRequest("stream: say which (?source=S&stream=NAME)"))
		return
	}
	s, err := d.in.StreamDetail(ctx, source, name)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	d.render(w, r, http.StatusOK, "stream", "Stream "+name, s)
}

// streamAction retries (unparks) or skips one stream.
func (d *dashboard) streamAction(w http.ResponseWriter, r *http.Request, confirmed bool) {
	ctx, cancel := d.ctx(r)
	defer cancel()
	action := r.PathValue("action")
	source, name := r.PostFormValue("source"), r.PostFormValue("stream")
	if (action != "retry" && action != "skip") || name == "" {
		d.fail(w, r, badRequest("say retry or skip, and which stream"))
		return
	}
	s, err := d.in.StreamDetail(ctx, source, name)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	back := d.opts.Prefix + "/stream?" + url.Values{"source": {s.Source}, "stream": {s.Stream}}.Encode()
	if !confirmed {
		c := confirmData{
			Verb:   action,
			Action: "/stream/" + action,
			Fields: [][2]string{{"source", s.Source}, {"stream", s.Stream}},
			Back:   back,
		}
		switch {
		case action == "retry":
			c.Subject = "stream " + s.Stream + " of source " + s.Source + ": unpark it and run its dead message again. It was parked because of"
			c.Pattern = s.ParkedReason
		case s.MissingTo > 0:
			c.Subject = "stream " + s.Stream + " of source " + s.Source + ": give up waiting for the missing sequence numbers and go on at the next one present. Missing:"
			c.Pattern = seqRange(s.MissingFrom, s.MissingTo)
		default:
			c.Subject = "stream " + s.Stream + " of source " + s.Source + ": mark the message at its watermark dead as skipped and go on with the next. Watermark:"
			c.Pattern = seqRange(s.NextSeq, s.NextSeq)
		}
		d.confirm(w, r, c)
		return
	}
	if action == "retry" {
		_, err = d.in.RetryStream(ctx, s.Source, s.Stream)
	} else {
		_, err = d.in.SkipStream(ctx, s.Source, s.Stream)
	}
	if errors.Is(err, inbox.ErrNotFound) {
		d.fail(w, r, err)
		return
	}
	if err != nil {
		// A skip with nothing to skip to, say: the operator needs to know.
		d.log.Warn("stream "+action+" failed", "source", s.Source, "stream", s.Stream, "error", err)
		d.render(w, r, http.StatusConflict, "error", "Not done", "The stream could not be changed: "+err.Error())
		return
	}
	d.log.Info("stream "+action, "source", s.Source, "stream", s.Stream)
	v := url.Values{"done": {"stream-" + map[string]string{"retry": "retried", "skip": "skipped"}[action]}}
	http.Redirect(w, r, back+"&"+v.Encode(), http.StatusSeeOther)
}
