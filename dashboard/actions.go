package dashboard

import (
	"errors"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// maxFormBytes bounds an action's form: they carry a few short fields.
const maxFormBytes = 64 << 10

// action wraps an action handler: refused when read-only or without a
// valid CSRF token; confirmed only when the confirmation page's form
// (confirm=yes) was posted, so one click never changes anything.
func (d *dashboard) action(fn func(w http.ResponseWriter, r *http.Request, confirmed bool)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if d.opts.ReadOnly {
			d.render(w, r, http.StatusForbidden, "error", "Read-only", "This dashboard is read-only: actions are turned off.")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
		if err := r.ParseForm(); err != nil {
			d.fail(w, r, badRequest("the form could not be read"))
			return
		}
		if !d.csrf.valid(r) {
			d.render(w, r, http.StatusForbidden, "error", "Refused",
				"The form's security token is missing or stale. Reload the page and try again.")
			return
		}
		fn(w, r, r.PostFormValue("confirm") == "yes")
	}
}

// confirmData is the confirmation step of an action.
type confirmData struct {
	Verb    string // retry, delete, skip
	Action  string // the path to post to, below the prefix
	Subject string
	Pattern string // the error or reason quoted under the question
	Filter  deadFilter
	Fields  [][2]string // hidden fields to post again
	Back    string
}

func (d *dashboard) confirm(w http.ResponseWriter, r *http.Request, c confirmData) {
	d.render(w, r, http.StatusOK, "confirm", "Confirm "+c.Verb, c)
}

// done redirects after an action (so a reload does not post again), with
// the outcome as a notice code.
func (d *dashboard) done(w http.ResponseWriter, r *http.Request, back, code string, n int) {
	codes := map[string]string{"retry": "retried", "delete": "deleted"}
	v := url.Values{"done": {codes[code]}, "n": {strconv.Itoa(n)}}
	sep := "?"
	if strings.Contains(back, "?") {
		sep = "&"
	}
	http.Redirect(w, r, back+sep+v.Encode(), http.StatusSeeOther)
}

func fieldsOf(v url.Values) [][2]string {
	var out [][2]string
	for k := range v {
		out = append(out, [2]string{k, v.Get(k)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i][0] < out[j][0] })
	return out
}

// parseKey reads a page key or row ID; empty is 0.
func parseKey(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, badRequest("not a row ID: " + strconv.Quote(s))
	}
	return n, nil
}

// parseTime reads a filter time: RFC 3339, a browser's datetime-local
// value or a date (UTC), or an age before now (90m, 2h, 3d).
func parseTime(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	for _, layout := range []string{time.RFC3339, "2006-01-02T15:04", "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.Atoi(days); err == nil && n >= 0 {
			return now.Add(-time.Duration(n) * 24 * time.Hour), nil
		}
	}
	if age, err := time.ParseDuration(s); err == nil && age >= 0 {
		return now.Add(-age), nil
	}
	return time.Time{}, errors.New("want a time (2024-05-01T10:00:00Z, 2024-05-01) or an age (90m, 2h, 3d)")
}
