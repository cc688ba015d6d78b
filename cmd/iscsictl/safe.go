package main

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"go.uber.org/zap/buffer"
	"go.uber.org/zap/zapcore"
)

// safe returns s fit to print on a terminal. Text from the network (target
// names and addresses, INQUIRY strings, TargetAlias, error messages that
// quote a target) could otherwise move the cursor, recolour or clear the
// screen, or forge lines with CR and LF. Every rune Go does not call
// printable (C0 controls, DEL, C1 controls, format characters such as bidi
// overrides, unassigned code points) becomes its Go escape (\x1b, \r,
// \u0085, \u202e), and each byte of invalid UTF-8 becomes \xNN; printable
// Unicode and the ASCII space stay as they are. A backslash is not doubled:
// messages that already quote with %q stay readable, at the price of a
// name holding the four characters `\x1b` reading like one holding ESC.
func safe(s string) string {
	i := 0
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 || !strconv.IsPrint(r) {
			break
		}
		i += n
	}
	if i == len(s) {
		return s
	}
	var b strings.Builder
	b.WriteString(s[:i])
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case strconv.IsPrint(r):
			b.WriteString(s[i : i+n])
		default:
			q := strconv.QuoteRune(r) // '\x1b', '\u202e', ...
			b.WriteString(q[1 : len(q)-1])
		}
		i += n
	}
	return b.String()
}

// safeOutput escapes, in encoded output (JSON or a console log line), the
// runes a terminal could act on that the encoder left raw: encoding/json and
// zap escape C0 controls but write DEL, C1 controls (U+0080 to U+009F, which
// some terminals take as escape sequences) and bidi overrides as they are.
// keep lists the control characters that are the output's own (its line
// ends). With jsonStyle a rune becomes \uXXXX (a surrogate pair above
// U+FFFF), which JSON decodes to the same rune: such runes only occur inside
// strings, so the document means what it meant. Otherwise runes are escaped
// as safe does. Invalid UTF-8 becomes \ufffd in JSON and \xNN otherwise.
func safeOutput(b []byte, keep string, jsonStyle bool) []byte {
	i := 0
	for i < len(b) {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n == 1 || !strconv.IsPrint(r) && !strings.ContainsRune(keep, r) {
			break
		}
		i += n
	}
	if i == len(b) {
		return b
	}
	out := bytes.NewBuffer(make([]byte, 0, len(b)+16))
	out.Write(b[:i])
	for i < len(b) {
		r, n := utf8.DecodeRune(b[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			if jsonStyle {
				out.WriteString(`\ufffd`)
			} else {
				fmt.Fprintf(out, `\x%02x`, b[i])
			}
		case strconv.IsPrint(r) || strings.ContainsRune(keep, r):
			out.Write(b[i : i+n])
		case jsonStyle && r > 0xffff:
			r1, r2 := utf16.EncodeRune(r)
			fmt.Fprintf(out, `\u%04x\u%04x`, r1, r2)
		case jsonStyle:
			fmt.Fprintf(out, `\u%04x`, r)
		default:
			q := strconv.QuoteRune(r)
			out.WriteString(q[1 : len(q)-1])
		}
		i += n
	}
	return out.Bytes()
}

// safeEncoder is a zap encoder whose log lines are fit for a terminal: the
// library logs text that comes from targets (keys, aliases, addresses,
// error messages). On a console line the message is escaped with safe (so
// a CR or LF in it cannot forge a line); then the encoded line goes through
// safeOutput, keeping the encoder's tabs and newlines (a stack trace's lines).
type safeEncoder struct {
	zapcore.Encoder
	json bool
}

func (e safeEncoder) Clone() zapcore.Encoder {
	return safeEncoder{Encoder: e.Encoder.Clone(), json: e.json}
}

func (e safeEncoder) EncodeEntry(ent zapcore.Entry, fields []zapcore.Field) (*buffer.Buffer, error) {
	if !e.json {
		// JSON escapes the message itself; a console line writes it raw.
		ent.Message = safe(ent.Message)
	}
	buf, err := e.Encoder.EncodeEntry(ent, fields)
	if err != nil {
		return buf, err
	}
	keep := "\t\n"
	if e.json {
		keep = "\n"
	}
	if out := safeOutput(buf.Bytes(), keep, e.json); len(out) != buf.Len() || !bytes.Equal(out, buf.Bytes()) {
		buf.Reset()
		buf.Write(out)
	}
	return buf, nil
}
