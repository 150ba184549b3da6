package inbox

import (
	"encoding/json"
	"maps"
	"strings"
	"testing"
)

// TestAppendHeaders checks the hand-written encoder against encoding/json:
// every header, tricky or not, reads back as encoding/json would have
// stored it, with NUL (which jsonb refuses) as U+FFFD.
func TestAppendHeaders(t *testing.T) {
	cases := []map[string]string{
		nil,
		{},
		{"a": "b"},
		{"quote\"": "back\\slash", "ctl": "\x01\x1f\n\r\t\b\f", "html": "<a href='x'>&amp;</a>"},
		{"nul\x00key": "nul\x00value", "": ""},
		{"bad": "a\xffb\xc3", "\xfe": "ok", "utf8": "héllo wörld ✓ 😀", "sep": "\u2028\u2029"},
		{"long": strings.Repeat("x\"y", 1000)},
	}
	for _, h := range cases {
		clean := map[string]string{}
		for k, v := range h {
			clean[strings.ReplaceAll(k, "\x00", "\uFFFD")] = strings.ReplaceAll(v, "\x00", "\uFFFD")
		}
		ref, err := json.Marshal(clean)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{}
		if err := json.Unmarshal(ref, &want); err != nil { // as encoding/json would store it
			t.Fatal(err)
		}
		enc := encodeHeaders(h)
		got := map[string]string{}
		if err := json.Unmarshal([]byte(enc), &got); err != nil {
			t.Fatalf("headers %q: %s is not JSON: %v", h, enc, err)
		}
		if !maps.Equal(got, want) {
			t.Errorf("headers %q: encoded %s, read back %q; want %q", h, enc, got, want)
		}
		if strings.Contains(enc, `\u0000`) {
			t.Errorf("headers %q: encoded %s holds NUL, which jsonb refuses", h, enc)
		}
	}
}
