package dashboard

import (
	"fmt"
	"html/template"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/inboxkit/inbox"
)

// pageNames are the templates in templates/, each rendered inside
// layout.html.
var pageNames = []string{"overview", "dead", "message", "streams", "stream", "confirm", "error"}

func parsePages() (map[string]*template.Template, error) {
	pages := map[string]*template.Template{}
	for _, name := range pageNames {
		t, err := template.New(name).Funcs(funcs).ParseFS(templateFiles, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("dashboard: parse %s page: %w", name, err)
		}
		pages[name] = t
	}
	return pages, nil
}

var funcs = template.FuncMap{
	"num":          func(n any) string { return num(toInt64(n)) },
	"pair":         func(p page, list []inbox.StreamInfo) streamTable { return streamTable{Page: p, List: list} },
	"stat":         func(n int64) string { return capped(n, inbox.StatsCountLimit) },
	"pending":      func(n int) string { return capped(int64(n), inbox.StreamPendingLimit) },
	"statsLimit":   func() int64 { return inbox.StatsCountLimit },
	"activityScan": func() int64 { return inbox.ActivityScan },
	"bodyPreview":  func() int64 { return BodyPreviewBytes },
	"dur":          dur,
	"ago":          ago,
	"when":         when,
	"short":        short,
	"seqRange":     seqRange,
	// Query strings are built here, escaped by url.Values, and marked as
	// such so that the template does not escape them a second time.
	"query": func(v url.Values) template.URL { return template.URL(v.Encode()) },
	"streamQuery": func(s inbox.StreamInfo) template.URL {
		return template.URL(url.Values{"source": {s.Source}, "stream": {s.Stream}}.Encode())
	},
	"missing": func(s inbox.StreamInfo) string {
		if s.GapSince == nil || s.HeadSeq <= s.NextSeq {
			return ""
		}
		return seqRange(s.NextSeq, s.HeadSeq-1)
	},
	"deadQuery": func(f deadFilter, fp string, before int64) template.URL {
		v := f.values(false)
		if fp != "" {
			v.Set("fp", fp)
		}
		if before != 0 {
			v.Set("before", strconv.FormatInt(before, 10))
		}
		return template.URL(v.Encode())
	},
}

// num prints an integer with thousands separators.
func num(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// capped prints a count that stopped at limit as "≥limit".
func capped(n, limit int64) string {
	if n >= limit {
		return "≥" + num(limit)
	}
	return num(n)
}

// dur prints a duration to the second, or finer under a second.
func dur(d time.Duration) string {
	switch {
	case d <= 0:
		return "–"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < 24*time.Hour:
		return d.Round(time.Second).String()
	}
	return fmt.Sprintf("%dd%s", int(d/(24*time.Hour)), (d % (24 * time.Hour)).Round(time.Minute))
}

// ago prints how long ago t was; t may be a time.Time or a *time.Time.
func ago(t any) string {
	switch v := t.(type) {
	case time.Time:
		if v.IsZero() {
			return "–"
		}
		return dur(time.Since(v)) + " ago"
	case *time.Time:
		if v == nil {
			return "–"
		}
		return ago(*v)
	}
	return ""
}

// when prints t in UTC, for title attributes and details.
func when(t any) string {
	switch v := t.(type) {
	case time.Time:
		if v.IsZero() {
			return ""
		}
		return v.UTC().Format("2006-01-02 15:04:05 UTC")
	case *time.Time:
		if v == nil {
			return ""
		}
		return when(*v)
	}
	return ""
}

// short cuts s to n characters, marking the cut.
func short(n int, s string) string {
	if len([]rune(s)) <= n {
		return s
	}
	return string([]rune(s)[:n]) + "…"
}

func seqRange(from, to int64) string {
	if from == to {
		return strconv.FormatInt(from, 10)
	}
	return strconv.FormatInt(from, 10) + "–" + strconv.FormatInt(to, 10)
}

// streamTable is what the streamTable template receives.
type streamTable struct {
	Page page
	List []inbox.StreamInfo
}

func toInt64(n any) int64 {
	switch v := n.(type) {
	case int:
		return int64(v)
	case int64:
		return v
	}
	return 0
}
