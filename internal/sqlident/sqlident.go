// Package sqlident validates and quotes the SQL identifiers (schema names)
// that come from configuration. Identifiers never come from message content.
package sqlident

import (
	"fmt"
	"regexp"

	"github.com/jackc/pgx/v5"
)

// maxLen is PostgreSQL's NAMEDATALEN-1: longer names are silently truncated
// by the server, which would make two configured schemas collide.
const maxLen = 63

var pattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Validate reports whether name is a plain identifier PostgreSQL keeps as is.
func Validate(name string) error {
	if name == "" {
		return fmt.Errorf("identifier is empty")
	}
	if len(name) > maxLen {
		return fmt.Errorf("identifier %q is longer than %d bytes", name, maxLen)
	}
	if !pattern.MatchString(name) {
		return fmt.Errorf("identifier %q must match %s", name, pattern)
	}
	return nil
}

// Quote returns name quoted for use in SQL text.
func Quote(name string) string {
	return pgx.Identifier{name}.Sanitize()
}
