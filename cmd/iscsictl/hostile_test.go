package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/pdu"
	"go.uber.org/zap"
)

// hostileName is the iSCSI name the hostile targets of these tests use.
const hostileName = "iqn.2026-01.org.goiscsi:hostile"

// hostileTarget starts an in-memory target (one 1 MiB LUN) whose hook
// answers the SCSI commands with operation code op with data and GOOD
// status, and the SendTargets requests with sendTargets when it is not nil;
// everything else is handled normally.
func hostileTarget(t *testing.T, op byte, data []byte, sendTargets []byte) *iscsitest.Target {
	t.Helper()
	hook := func(ev *iscsitest.Event) iscsitest.Action {
		switch p := ev.PDU.(type) {
		case *pdu.SCSICommand:
			if data != nil && p.CDB[0] == op {
				return iscsitest.Respond(&pdu.DataIn{Final: true, HasStatus: true, LUN: p.LUN, ITT: p.ITT, TTT: 0xffffffff}, data)
			}
		case *pdu.TextRequest:
			if sendTargets != nil {
				return iscsitest.Respond(&pdu.TextResponse{Final: true, ITT: p.ITT, TTT: 0xffffffff}, sendTargets)
			}
		}
		return iscsitest.Continue
	}
	tg := iscsitest.NewTarget(iscsitest.Config{Name: hostileName, LUNs: []int64{1 << 20}, Hook: hook})
	t.Cleanup(tg.Close)
	return tg
}

// readCap16 is READ CAPACITY(16) parameter data: last LBA, block length,
// n bytes of it.
func readCap16(last uint64, bs uint32, n int) []byte {
	b := make([]byte, 32)
	binary.BigEndian.PutUint64(b, last)
	binary.BigEndian.PutUint32(b[8:], bs)
	return b[:n]
}

// noPanic fails the test if a run shows a Go panic.
func noPanic(t *testing.T, r result) {
	t.Helper()
	for _, s := range []string{"panic", "goroutine ", "internal error"} {
		if strings.Contains(r.stderr, s) {
			t.Errorf("stderr shows a panic (%q):\n%s", s, r.stderr)
		}
	}
}

// TestHostileReadCapacity: a target that answers READ CAPACITY(16) with a
// block size of 0, a last LBA of 2^64-1 or too few bytes makes every command
// that uses the capacity exit 1 with a message naming the field, never
// panic (which exited 2, the status of "no session to the target").
func TestHostileReadCapacity(t *testing.T) {
	t.Parallel()
	in := filepath.Join(t.TempDir(), "in")
	if err := os.WriteFile(in, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	answers := []struct {
		name string
		data []byte
		want string
	}{
		{"block size 0", readCap16(2047, 0, 32), "block size 0 "},
		{"last LBA 2^64-1", readCap16(^uint64(0), 512, 32), "last LBA 0xffffffffffffffff"},
		{"8 bytes", readCap16(2047, 512, 8), "8 bytes of parameter data"},
	}
	for _, ans := range answers {
		t.Run(ans.name, func(t *testing.T) {
			t.Parallel()
			tg := hostileTarget(t, 0x9e, ans.data, nil)
			portal := []string{"--portal", tg.Addr(), "--target", hostileName}
			for _, args := range [][]string{
				{"perf", "--duration", "1s", "--lun", "0"},
				{"perf", "--duration", "1s"}, // the LUN found with REPORT LUNS and INQUIRY
				{"write", "--in", in, "--lun", "0"},
				{"write", "--blocks", "1", "--lun", "0"},
				{"read", "--blocks", "1", "--lun", "0"},
				{"readcap", "--lun", "0"},
				{"readcap"},
				{"logout", "--io", "--io-lun", "0"},
				{"logout", "--io", "--json"},
			} {
				r := iscsictl(t, append(args, portal...)...)
				noPanic(t, r)
				if r.code != exitError {
					t.Errorf("%v: exit status %d, want %d\nstderr:\n%s", args, r.code, exitError, r.stderr)
					continue
				}
				want := "target returned invalid READ CAPACITY data: " + ans.want
				if !strings.Contains(r.stderr, want) {
					t.Errorf("%v: stderr lacks %q:\n%s", args, want, r.stderr)
				}
			}
		})
	}
}

// TestHostileInquiry: the INQUIRY strings of a target are printed with their
// control characters escaped, and a tab in them does not make a column.
func TestHostileInquiry(t *testing.T) {
	t.Parallel()
	data := make([]byte, 36)
	data[4] = 31
	copy(data[8:], "                            ")
	copy(data[8:], "\x1b[2J\r\nEV")       // vendor: clear the screen, new line
	copy(data[16:], "DISK\x1b]0;pwned\a") // product: set the window title
	copy(data[32:], "1\t\x9b2")           // revision: a tab, a C1 CSI in Latin-1
	tg := hostileTarget(t, 0x12, data, nil)
	r := iscsictl(t, "inquiry", "--portal", tg.Addr(), "--target", hostileName, "--lun", "0").want(t, exitOK)
	for _, want := range []string{`\x1b[2J\r\nEV`, `DISK\x1b]0;pwned\a`, `1\t\x9b2`} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.ContainsAny(r.stdout, "\x1b\r\a\t") || strings.Contains(r.stdout, "\x9b") {
		t.Errorf("stdout holds raw control characters: %q", r.stdout)
	}
	// JSON keeps the strings, escaped by the encoder.
	r = iscsictl(t, "inquiry", "--portal", tg.Addr(), "--target", hostileName, "--lun", "0", "--json").want(t, exitOK)
	if got := path(t, r.json(t), "luns", 0, "vendor"); got != "\x1b[2J\r\nEV" {
		t.Errorf("JSON vendor %q", got)
	}
	if strings.ContainsAny(r.stdout, "\x1b\r\a") {
		t.Errorf("JSON stdout holds raw control characters: %q", r.stdout)
	}
}

// evilName is a target name with a colour escape, a CR LF that would forge a
// line, DEL, a C1 CSI (U+009B) and a bidi override.
const evilName = "iqn.2026-01.org.evil:\x1b[31mred\r\nfake\x7f\u009b2J\u202e"

// evilAddress is a TargetAddress that sets the terminal's title.
const evilAddress = "10.0.0.1:3260,1\x1b]0;pwned\a"

// TestHostileDiscover: discover prints the names and addresses a target
// offers with their control characters escaped, in text and in JSON.
func TestHostileDiscover(t *testing.T) {
	t.Parallel()
	st := pdu.AppendText(nil, pdu.KV{Key: "TargetName", Value: evilName}, pdu.KV{Key: "TargetAddress", Value: evilAddress},
		pdu.KV{Key: "TargetName", Value: "iqn.2026-01.org.evil:bad\xffutf8"})
	tg := hostileTarget(t, 0, nil, st)
	r := iscsictl(t, "discover", "--portal", tg.Addr()).want(t, exitOK)
	for _, want := range []string{
		`iqn.2026-01.org.evil:\x1b[31mred\r\nfake\x7f\u009b2J\u202e` + "\n",
		"    " + `10.0.0.1:3260,1\x1b]0;pwned\a` + "\n",
		`iqn.2026-01.org.evil:bad\xffutf8` + "\n",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.ContainsAny(r.stdout, "\x1b\r\a\x7f\u009b\u202e") || strings.Contains(r.stdout, "\xff") {
		t.Errorf("stdout holds raw control characters: %q", r.stdout)
	}
	if lines := strings.Count(r.stdout, "\n"); lines != 3 {
		t.Errorf("%d lines, want 3 (two names, one address):\n%s", lines, r.stdout)
	}

	// JSON: the same strings once decoded, no raw control character in the
	// document (encoding/json leaves DEL, C1 and bidi overrides raw).
	r = iscsictl(t, "discover", "--portal", tg.Addr(), "--json").want(t, exitOK)
	v := r.json(t)
	if got := path(t, v, "targets", 0, "name"); got != evilName {
		t.Errorf("JSON name %q, want %q", got, evilName)
	}
	if got := path(t, v, "targets", 0, "portals", 0); got != evilAddress {
		t.Errorf("JSON address %q, want %q", got, evilAddress)
	}
	if strings.ContainsAny(r.stdout, "\x1b\r\a\x7f\u009b\u202e") {
		t.Errorf("JSON stdout holds raw control characters: %q", r.stdout)
	}
}

// TestHostileOnlyTarget: without --target a command uses the portal's only
// target; when the target offers a malformed name the error blames the
// target (status 1), not the command line (status 5), and the name is
// escaped.
func TestHostileOnlyTarget(t *testing.T) {
	t.Parallel()
	st := pdu.AppendText(nil, pdu.KV{Key: "TargetName", Value: evilName}, pdu.KV{Key: "TargetAddress", Value: "10.0.0.1:3260,1"})
	tg := hostileTarget(t, 0, nil, st)
	for _, args := range [][]string{
		{"login", "--portal", tg.Addr()},
		{"inquiry", "--portal", tg.Addr()},
		{"perf", "--portal", tg.Addr(), "--duration", "1s", "--json"},
	} {
		r := iscsictl(t, args...)
		noPanic(t, r)
		if r.code != exitError {
			t.Errorf("%v: exit status %d, want %d\nstderr:\n%s", args, r.code, exitError, r.stderr)
			continue
		}
		want := "the target at portal " + tg.Addr() + ` offered an invalid name "iqn.2026-01.org.evil:\x1b[31mred\r\nfake\x7f\u009b2J\u202e": character`
		if !strings.Contains(r.stderr, want) {
			t.Errorf("%v: stderr lacks %q:\n%s", args, want, r.stderr)
		}
		if strings.Contains(r.stderr, "invalid argument") || strings.ContainsAny(r.stderr, "\x1b\r\x7f\u009b\u202e") {
			t.Errorf("%v: stderr blames the command line or holds raw control characters: %q", args, r.stderr)
		}
	}
}

func TestSafe(t *testing.T) {
	for in, want := range map[string]string{
		"iqn.2001-04.com.example:disk1": "iqn.2001-04.com.example:disk1",
		"héllo wörld ディスク":              "héllo wörld ディスク",
		"a\x1b[31mb":                    `a\x1b[31mb`,
		"line\r\nforged":                `line\r\nforged`,
		"tab\there":                     `tab\there`,
		"nul\x00":                       `nul\x00`,
		"del\x7f":                       `del\x7f`,
		"c1\u009b2J\u0085":              `c1\u009b2J\u0085`,
		"bidi\u202eevil":                `bidi\u202eevil`,
		"bad\xff\xfeutf8":               `bad\xff\xfeutf8`,
		"cut\xe3\x83":                   `cut\xe3\x83`,
		"\ufffd real replacement char":  "\ufffd real replacement char",
		`already "quoted\x1b"`:          `already "quoted\x1b"`,
	} {
		if got := safe(in); got != want {
			t.Errorf("safe(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSafeOutput(t *testing.T) {
	tests := []struct {
		in, keep string
		json     bool
		want     string
	}{
		{"{\n  \"a\": \"x\u009by\x7f\u202e\U000e0001\"\n}\n", "\n", true, "{\n  \"a\": \"x\\u009by\\u007f\\u202e\\udb40\\udc01\"\n}\n"},
		{"{\"ok\": \"plain é\"}\n", "\n", true, "{\"ok\": \"plain é\"}\n"},
		{"bad\xff\n", "\n", true, "bad\\ufffd\n"},
		{"INFO\tmsg\t{\"k\": \"v\x7f\u009b\"}\nstack\n", "\t\n", false, "INFO\tmsg\t{\"k\": \"v\\x7f\\u009b\"}\nstack\n"},
		{"a\rb\xff\n", "\t\n", false, "a\\rb\\xff\n"},
	}
	for _, tt := range tests {
		if got := string(safeOutput([]byte(tt.in), tt.keep, tt.json)); got != tt.want {
			t.Errorf("safeOutput(%q, %q, %v) = %q, want %q", tt.in, tt.keep, tt.json, got, tt.want)
		}
	}
}

// TestLoggerEscapes: a log line quoting a target's text, in the message or
// in a field, holds no raw control character and stays one line.
func TestLoggerEscapes(t *testing.T) {
	for _, format := range []string{"console", "json"} {
		var buf bytes.Buffer
		log, err := newLogger("info", format, &buf)
		if err != nil {
			t.Fatal(err)
		}
		log.Info("target said \x1b[31mred\r\nFORGED LINE", zap.String("alias", "a\x7fb\u009bc\u202ed\x1b"))
		log.Sync()
		out := buf.String()
		if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") {
			t.Errorf("%s: not one line: %q", format, out)
		}
		if strings.ContainsAny(out, "\x1b\r\x7f\u009b\u202e") {
			t.Errorf("%s: raw control characters: %q", format, out)
		}
		if format == "console" && !strings.Contains(out, `\x1b[31mred\r\nFORGED LINE`) {
			t.Errorf("%s: message not escaped as safe does: %q", format, out)
		}
		if format == "json" {
			var v map[string]any
			if err := json.Unmarshal([]byte(out), &v); err != nil {
				t.Fatalf("json: %v: %q", err, out)
			}
			if v["alias"] != "a\x7fb\u009bc\u202ed\x1b" || v["msg"] != "target said \x1b[31mred\r\nFORGED LINE" {
				t.Errorf("json: the values do not decode to what was logged: %q", out)
			}
		}
	}
}
