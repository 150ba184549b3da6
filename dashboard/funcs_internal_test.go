package dashboard

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestParseTime(t *testing.T) {
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"":                     {},
		"2024-04-30T10:00:00Z": time.Date(2024, 4, 30, 10, 0, 0, 0, time.UTC),
		"2024-04-30T10:00":     time.Date(2024, 4, 30, 10, 0, 0, 0, time.UTC),
		"2024-04-30":           time.Date(2024, 4, 30, 0, 0, 0, 0, time.UTC),
		"90m":                  now.Add(-90 * time.Minute),
		"3d":                   now.Add(-72 * time.Hour),
	} {
		got, err := parseTime(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseTime(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"yesterday", "-5m", "2024-13-01"} {
		if _, err := parseTime(bad, now); err == nil {
			t.Errorf("parseTime(%q) gave no error", bad)
		}
	}
}

func TestCountsShowTheirCap(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", -1234: "-1,234", 9999: "9,999", 10_000: "≥10,000", 20_000: "≥10,000"} {
		if got := capped(n, 10_000); got != want {
			t.Errorf("capped(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestNoticeOnlyFromKnownCodes(t *testing.T) {
	for q, want := range map[string]string{
		"done=retried&n=3":          "Retried 3 dead message(s).",
		"done=stream-skipped":       "The stream was moved past what blocked it.",
		"done=retried&n=3%3Cscript": "",
		"done=anything+you+like":    "",
	} {
		r := httptestRequest("/dead?" + q)
		if got := notice(r); got != want {
			t.Errorf("notice(%s) = %q, want %q", q, got, want)
		}
	}
}

func httptestRequest(target string) *http.Request { return httptest.NewRequest("GET", target, nil) }
