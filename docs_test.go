package inbox_test

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/inboxkit/inbox"
	"github.com/inboxkit/inbox/internal/testenv"
)

// TestDocCodeBlocks keeps the README, docs/testing.md and docs/outbox.md
// honest: every Go code block in them must appear, line for line
// (indentation aside), in a Go file of the repository that is compiled and
// tested, such as this one, an example program or a test of the inboxtest
// module.
func TestDocCodeBlocks(t *testing.T) {
	docs := map[string][]string{}
	for _, name := range []string{"README.md", "docs/testing.md", "docs/outbox.md"} {
		md, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		docs[name] = goBlocks(string(md))
		if len(docs[name]) == 0 {
			t.Fatalf("no Go code blocks found in %s", name)
		}
	}
	var sources [][]string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") {
			return err
		}
		b, err := os.ReadFile(path)
		if err == nil {
			sources = append(sources, normalize(string(b)))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, blocks := range docs {
		for i, block := range blocks {
			want := normalize(block)
			found := false
			for _, src := range sources {
				if containsLines(src, want) {
					found = true
					break
				}
			}
			if !found {
				t.Errorf("%s: Go block %d is not in any .go file; keep it a copy of compiled code:\n%s", name, i+1, block)
			}
		}
	}
}

// goBlocks returns the bodies of the ```go fences of a Markdown text.
func goBlocks(md string) []string {
	var blocks []string
	var cur []string
	in := false
	for _, line := range strings.Split(md, "\n") {
		switch {
		case !in && strings.TrimSpace(line) == "```go":
			in, cur = true, nil
		case in && strings.TrimSpace(line) == "```":
			in = false
			blocks = append(blocks, strings.Join(cur, "\n"))
		case in:
			cur = append(cur, line)
		}
	}
	return blocks
}

// normalize drops blank lines and the indentation of each line.
func normalize(s string) []string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if line = strings.TrimSpace(line); line != "" {
			out = append(out, line)
		}
	}
	return out
}

func containsLines(src, want []string) bool {
	for i := 0; i+len(want) <= len(src); i++ {
		if slices.Equal(src[i:i+len(want)], want) {
			return true
		}
	}
	return false
}

// TestConfigTable checks that the configuration table of
// docs/configuration.md names every Config field, and shows the default New
// fills in for each field with a plain value.
func TestConfigTable(t *testing.T) {
	const doc = "docs/configuration.md"
	readme, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	section := string(readme)
	start := strings.Index(section, "\n## inbox.Config\n")
	if start < 0 {
		t.Fatal(doc + " has no inbox.Config section")
	}
	section = section[start:]
	if end := strings.Index(section[1:], "\n## "); end >= 0 {
		section = section[:end+1]
	}
	row := regexp.MustCompile("(?m)^\\| `([A-Za-z]+)` \\| ([^|]+) \\|")
	documented := map[string]string{}
	for _, m := range row.FindAllStringSubmatch(section, -1) {
		documented[m[1]] = strings.TrimSpace(m[2])
	}

	pool, err := pgxpool.New(context.Background(), testenv.PostgresURL())
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	in, err := inbox.New(pool, inbox.Config{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := reflect.ValueOf(in.Config())
	for i := range cfg.NumField() {
		name := cfg.Type().Field(i).Name
		text, ok := documented[name]
		if !ok {
			t.Errorf("%s: the configuration table lacks Config.%s", doc, name)
			continue
		}
		delete(documented, name)
		if want, ok := defaultText(cfg.Field(i).Interface()); ok && text != want {
			t.Errorf("%s: Config.%s defaults to %s, the table says %s", doc, name, want, text)
		}
	}
	for name := range documented {
		t.Errorf("%s: the configuration table has %s, which Config does not", doc, name)
	}
}

// defaultText renders a default the way the configuration table writes it; ok
// is false for values it does not render (loggers, providers, slices).
func defaultText(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return "`" + x + "`", true
	case bool:
		return strconv.FormatBool(x), true
	case int:
		if x >= 1<<20 && x%(1<<20) == 0 {
			return fmt.Sprintf("%d MiB", x>>20), true
		}
		return strconv.Itoa(x), true
	case *int64:
		return strconv.FormatInt(*x, 10), true
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64), true
	case inbox.GapPolicy:
		s := x.String()
		return "`Gap" + strings.ToUpper(s[:1]) + s[1:] + "`", true
	case time.Duration:
		for _, u := range []struct {
			d      time.Duration
			suffix string
		}{{time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}} {
			if x%u.d == 0 {
				return fmt.Sprintf("%d%s", x/u.d, u.suffix), true
			}
		}
		return x.String(), true
	}
	return "", false
}
