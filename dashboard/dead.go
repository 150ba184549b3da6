package dashboard

import (
	"context"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/inboxkit/inbox"
)

// deadFilter is the dead page's filter as typed, kept as text so that the
// form shows it back and the action forms carry it on.
type deadFilter struct {
	Topic, Error, Since, Until, Fingerprint string
}

func readDeadFilter(v url.Values) deadFilter {
	return deadFilter{
		Topic:       strings.TrimSpace(v.Get("topic")),
		Error:       strings.TrimSpace(v.Get("error")),
		Since:       strings.TrimSpace(v.Get("since")),
		Until:       strings.TrimSpace(v.Get("until")),
		Fingerprint: strings.TrimSpace(v.Get("fp")),
	}
}

// query turns the filter into the library's query.
func (f deadFilter) query(now time.Time) (inbox.DeadQuery, error) {
	q := inbox.DeadQuery{Topic: f.Topic, ErrorContains: f.Error, Fingerprint: f.Fingerprint}
	var err error
	if q.Since, err = parseTime(f.Since, now); err != nil {
		return q, badRequest("since: " + err.Error())
	}
	if q.Until, err = parseTime(f.Until, now); err != nil {
		return q, badRequest("until: " + err.Error())
	}
	return q, nil
}

// values is the filter as URL parameters; without the group when
// withGroup is false.
func (f deadFilter) values(withGroup bool) url.Values {
	v := url.Values{}
	for k, s := range map[string]string{"topic": f.Topic, "error": f.Error, "since": f.Since, "until": f.Until} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if withGroup && f.Fingerprint != "" {
		v.Set("fp", f.Fingerprint)
	}
	return v
}

// Active tells whether any filter is set, for the page's wording.
func (f deadFilter) Active() bool {
	return f.Topic != "" || f.Error != "" || f.Since != "" || f.Until != ""
}

type deadData struct {
	Filter   deadFilter
	Groups   inbox.DeadGroups
	Group    *inbox.DeadGroup
	Scan     int
	Messages []inbox.MessageInfo
	// Next is the key of the next (older) page, 0 when there is none.
	Next int64
	// Before is this page's key, 0 on the first page.
	Before int64
}

const deadPageSize = 50

func (d *dashboard) deadList(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := d.ctx(r)
	defer cancel()
	f := readDeadFilter(r.URL.Query())
	q, err := f.query(time.Now())
	if err != nil {
		d.fail(w, r, err)
		return
	}
	data := deadData{Filter: f, Scan: inbox.DeadGroupScan}
	gq := q
	gq.Fingerprint = ""
	if data.Groups, err = d.in.DeadGroups(ctx, gq); err != nil {
		d.fail(w, r, err)
		return
	}
	for i, g := range data.Groups.Groups {
		if g.Fingerprint == f.Fingerprint {
			data.Group = &data.Groups.Groups[i]
		}
	}
	if data.Before, err = parseKey(r.URL.Query().Get("before")); err != nil {
		d.fail(w, r, err)
		return
	}
	q.BeforeRowID, q.Limit = data.Before, deadPageSize+1
	list, err := d.in.ListDead(ctx, q)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	var more bool
	data.Messages, more = firstN(list, deadPageSize)
	if more {
		data.Next = data.Messages[len(data.Messages)-1].RowID
	}
	d.render(w, r, http.StatusOK, "dead", "Dead messages", data)
}

// messageData is one message's page.
type messageData struct {
	Message   inbox.MessageInfo
	Headers   [][2]string
	Body      string
	BodyBytes int
	Truncated bool
	Binary    bool
}

func (d *dashboard) message(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := d.ctx(r)
	defer cancel()
	id, err := parseKey(r.PathValue("id"))
	if err != nil || id == 0 {
		d.fail(w, r, badRequest("message: the ID must be a positive number"))
		return
	}
	m, err := d.in.GetMessage(ctx, id)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	body, size, err := d.in.MessageBody(ctx, id, BodyPreviewBytes)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	data := messageData{Message: m, BodyBytes: size, Truncated: size > len(body), Binary: !utf8.Valid(body)}
	// A cut may split a character at the end: not a sign of binary.
	if data.Binary && data.Truncated && utf8.Valid(trimPartialRune(body)) {
		data.Binary = false
	}
	data.Body = strings.ToValidUTF8(string(body), "\uFFFD")
	for k, v := range m.Headers {
		data.Headers = append(data.Headers, [2]string{k, v})
	}
	sort.Slice(data.Headers, func(i, j int) bool { return data.Headers[i][0] < data.Headers[j][0] })
	d.render(w, r, http.StatusOK, "message", "Message "+strconv.FormatInt(id, 10), data)
}

func trimPartialRune(b []byte) []byte {
	for i := 0; i < utf8.UTFMax && len(b) > 0; i++ {
		if utf8.Valid(b) {
			return b
		}
		b = b[:len(b)-1]
	}
	return b
}

// deadAction retries or deletes one dead message (id) or a group (fp with
// the filter it was listed under).
func (d *dashboard) deadAction(w http.ResponseWriter, r *http.Request, confirmed bool) {
	ctx, cancel := d.ctx(r)
	defer cancel()
	action := r.PathValue("action")
	if action != "retry" && action != "delete" {
		d.fail(w, r, badRequest("unknown action"))
		return
	}
	f := readDeadFilter(r.PostForm)
	back := d.opts.Prefix + "/dead"
	if v := f.values(false).Encode(); v != "" {
		back += "?" + v
	}
	if idText := r.PostFormValue("id"); idText != "" {
		d.deadOne(ctx, w, r, action, idText, back, confirmed)
		return
	}
	if f.Fingerprint == "" {
		d.fail(w, r, badRequest("say which message (id) or which group (fp)"))
		return
	}
	q, err := f.query(time.Now())
	if err != nil {
		d.fail(w, r, err)
		return
	}
	if !confirmed {
		groups, err := d.in.DeadGroups(ctx, q)
		if err != nil {
			d.fail(w, r, err)
			return
		}
		if len(groups.Groups) == 0 {
			d.fail(w, r, inbox.ErrNotFound)
			return
		}
		g := groups.Groups[0]
		count := strconv.FormatInt(g.Count, 10)
		if groups.Capped {
			count = "at least " + count
		}
		d.confirm(w, r, confirmData{
			Verb:    action,
			Action:  "/dead/" + action,
			Subject: count + " dead message(s) that failed with",
			Pattern: g.Pattern,
			Filter:  f,
			Fields:  fieldsOf(f.values(true)),
			Back:    back,
		})
		return
	}
	var n int
	if action == "retry" {
		n, err = d.in.RetryDeadGroup(ctx, q)
	} else {
		n, err = d.in.DeleteDeadGroup(ctx, q)
	}
	if err != nil {
		d.fail(w, r, err)
		return
	}
	d.log.Info("dead group "+action, "fingerprint", f.Fingerprint, "topic", f.Topic, "count", n)
	d.done(w, r, back, action, n)
}

func (d *dashboard) deadOne(ctx context.Context, w http.ResponseWriter, r *http.Request, action, idText, back string, confirmed bool) {
	id, err := parseKey(idText)
	if err != nil || id == 0 {
		d.fail(w, r, badRequest("id must be a positive number"))
		return
	}
	m, err := d.in.GetMessage(ctx, id)
	if err == nil && m.State != inbox.StateDead {
		err = inbox.ErrNotFound
	}
	if err != nil {
		d.fail(w, r, err)
		return
	}
	if !confirmed {
		d.confirm(w, r, confirmData{
			Verb:    action,
			Action:  "/dead/" + action,
			Subject: "dead message " + idText + " (topic " + m.Topic + ", ID " + m.ID + ") that failed with",
			Pattern: m.LastError,
			Fields:  [][2]string{{"id", idText}},
			Back:    back,
		})
		return
	}
	f := inbox.MessageFilter{RowIDs: []int64{id}}
	var n int
	if action == "retry" {
		n, err = d.in.RetryDeadMessages(ctx, f)
	} else {
		n, err = d.in.DeleteDeadMessages(ctx, f)
	}
	if err != nil {
		d.fail(w, r, err)
		return
	}
	d.log.Info("dead message "+action, "row_id", id, "count", n)
	d.done(w, r, back, action, n)
}
