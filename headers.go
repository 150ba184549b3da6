package inbox

import "unicode/utf8"

// Headers are stored as a jsonb object of strings. They are encoded here,
// for every message stored, without building a cleaned copy of the map:
// jsonb refuses NUL, which an untrusted publisher may put in a header, so
// NUL becomes U+FFFD, as does each byte that is not UTF-8 (as
// encoding/json does). Key order does not matter: jsonb keeps its own.

// appendHeaders appends h to b as a JSON object.
func appendHeaders(b []byte, h map[string]string) []byte {
	if len(h) == 0 {
		return append(b, "{}"...)
	}
	b = append(b, '{')
	first := true
	for k, v := range h {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendJSONString(b, k)
		b = append(b, ':')
		b = appendJSONString(b, v)
	}
	return append(b, '}')
}

// encodeHeaders is h as a JSON object.
func encodeHeaders(h map[string]string) string {
	return string(appendHeaders(nil, h))
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s to b as a JSON string, NUL and bytes that are
// not UTF-8 replaced by U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0 // s[start:i] is yet to be copied as it is
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, `\n`...)
			case '\r':
				b = append(b, `\r`...)
			case '\t':
				b = append(b, `\t`...)
			case 0:
				b = append(b, `\ufffd`...)
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			start = i + size
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
