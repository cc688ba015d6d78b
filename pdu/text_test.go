package pdu_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/goiscsi/iscsi/pdu"
)

func TestTextRoundTrip(t *testing.T) {
	kvs := []pdu.KV{
		{"TargetName", "iqn.2001-04.com.example:storage.disk1"},
		{"TargetAddress", "[fe80::1]:3260,1"},
		{"AuthMethod", "CHAP,None"},
		{"CHAP_C", "0x" + strings.Repeat("ab", 1024)},
		{"CHAP_R", "0b" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 1024))},
		{"TargetAlias", "Ünïcode alias = with equals"},
		{"X-com.example.Key", ""},
		{"X#NodeArchitecture", "goiscsi/0.1"},
		{"MaxRecvDataSegmentLength", strings.Repeat("9", 255)},
	}
	b := pdu.AppendText([]byte("prefix"), kvs...)
	got, err := pdu.ParseText(b[len("prefix"):], pdu.TextLimits{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, kvs) {
		t.Fatalf("got %q", got)
	}
	if v, ok := pdu.Lookup(got, "AuthMethod"); !ok || v != "CHAP,None" {
		t.Errorf("Lookup: %q %v", v, ok)
	}
	if _, ok := pdu.Lookup(got, "HeaderDigest"); ok {
		t.Error("Lookup found a missing key")
	}
	for _, empty := range []string{"", "\x00", "\x00\x00\x00\x00"} {
		if got, err := pdu.ParseText([]byte(empty), pdu.TextLimits{}); got != nil || err != nil {
			t.Errorf("segment %q: %#v, %v", empty, got, err)
		}
	}
	// Extra NULs, as some targets pad, carry nothing.
	if got, err := pdu.ParseText([]byte("A=1\x00\x00\x00B=2\x00\x00"), pdu.TextLimits{}); err != nil || len(got) != 2 {
		t.Errorf("padded segment: %q, %v", got, err)
	}
}

func TestTextErrors(t *testing.T) {
	long := func(n int) string { return strings.Repeat("a", n) }
	many := strings.Repeat("K=v\x00", 2)
	var tenThousand strings.Builder
	for i := range 10000 {
		fmt.Fprintf(&tenThousand, "K%d=v\x00", i)
	}
	for _, c := range []struct {
		name, text string
		lim        pdu.TextLimits
		offset     int
		key        string
		reason     string
	}{
		{"no '='", "A=1\x00Broken\x00", pdu.TextLimits{}, 4, "", "no '='"},
		{"last pair without NUL", "A=1\x00B=2", pdu.TextLimits{}, 4, "", "not terminated"},
		{"empty key", "=1\x00", pdu.TextLimits{}, 0, "", "empty key"},
		{"key of 64 bytes", "K" + long(63) + "=1\x00", pdu.TextLimits{}, 0, "K" + long(62) + "...", "longer than 63"},
		{"value of 256 bytes", "K=" + long(256) + "\x00", pdu.TextLimits{}, 0, "K", "longer than 255"},
		{"list element of 256 bytes", "K=a," + long(256) + "\x00", pdu.TextLimits{}, 0, "K", "longer than 255"},
		{"hex value of 1025 bytes", "CHAP_C=0x" + strings.Repeat("ab", 1025) + "\x00", pdu.TextLimits{}, 0, "CHAP_C", "hex value longer"},
		{"odd hex value of 1025 bytes", "CHAP_C=0x" + strings.Repeat("a", 2049) + "\x00", pdu.TextLimits{}, 0, "CHAP_C", "hex value longer"},
		{"base64 value of 1025 bytes", "CHAP_C=0b" + base64.StdEncoding.EncodeToString(make([]byte, 1025)) + "\x00", pdu.TextLimits{}, 0, "CHAP_C", "base64 value longer"},
		{"lower-case key", "authMethod=None\x00", pdu.TextLimits{}, 0, "authMethod", "capital"},
		{"digit first", "9Key=1\x00", pdu.TextLimits{}, 0, "9Key", "capital"},
		{"space in key", "Auth Method=None\x00", pdu.TextLimits{}, 0, "Auth Method", "0x20"},
		{"'#' past the prefix", "XX#Key=1\x00", pdu.TextLimits{}, 0, "XX#Key", "0x23"},
		{"'#' after another letter", "A#Key=1\x00", pdu.TextLimits{}, 0, "A#Key", "0x23"},
		{"NUL-free garbage key", "K\xff=1\x00", pdu.TextLimits{}, 0, "K\xff", "0xff"},
		{"duplicate", "A=1\x00B=2\x00A=3\x00", pdu.TextLimits{}, 8, "A", "repeated"},
		{"over MaxPairs", many, pdu.TextLimits{MaxPairs: 1, AllowDuplicates: true}, 4, "", "more than 1 pairs"},
		{"10,000 pairs", tenThousand.String(), pdu.TextLimits{}, 1024 * 4, "", "more than 1024 pairs"},
	} {
		t.Run(c.name, func(t *testing.T) {
			kvs, err := pdu.ParseText([]byte(c.text), c.lim)
			var te *pdu.TextError
			if !errors.As(err, &te) {
				t.Fatalf("got %q, %v; want a *TextError", kvs, err)
			}
			if kvs != nil || te.Key != c.key || !strings.Contains(te.Reason, c.reason) {
				t.Fatalf("got %q: Key %q Reason %q", err, te.Key, te.Reason)
			}
			if c.name != "10,000 pairs" && te.Offset != c.offset {
				t.Fatalf("offset %d, want %d", te.Offset, c.offset)
			}
		})
	}
	// The 10,000th pair is never reached: the 1025th is refused.
	_, err := pdu.ParseText([]byte(tenThousand.String()), pdu.TextLimits{})
	if te := (*pdu.TextError)(nil); !errors.As(err, &te) || te.Offset != len("K0=v\x00")*10+len("K10=v\x00")*90+len("K100=v\x00")*900+len("K1000=v\x00")*24 {
		t.Errorf("refused at %v", err)
	}
}

func TestTextDuplicates(t *testing.T) {
	sendTargets := "TargetName=iqn.a\x00TargetAddress=10.0.0.1:3260,1\x00TargetAddress=10.0.0.2:3260,1\x00TargetName=iqn.b\x00"
	kvs, err := pdu.ParseText([]byte(sendTargets), pdu.TextLimits{AllowDuplicates: true})
	if err != nil || len(kvs) != 4 {
		t.Fatalf("%q %v", kvs, err)
	}
	if _, err := pdu.ParseText([]byte(sendTargets), pdu.TextLimits{}); err == nil {
		t.Fatal("duplicates accepted")
	}
	// Past 32 pairs duplicates are found with a map: the same answers.
	var b []byte
	for i := range 100 {
		b = pdu.AppendText(b, pdu.KV{Key: fmt.Sprintf("K%d", i), Value: "v"})
	}
	if kvs, err := pdu.ParseText(b, pdu.TextLimits{}); err != nil || len(kvs) != 100 {
		t.Fatalf("100 distinct keys: %d, %v", len(kvs), err)
	}
	for _, dup := range []string{"K0", "K31", "K32", "K99"} {
		b2 := pdu.AppendText(bytes.Clone(b), pdu.KV{Key: dup, Value: "again"})
		var te *pdu.TextError
		if _, err := pdu.ParseText(b2, pdu.TextLimits{}); !errors.As(err, &te) || te.Key != dup || te.Offset != len(b) {
			t.Errorf("repeated %s: %v", dup, err)
		}
	}
}

func TestParseNumber(t *testing.T) {
	for _, c := range []struct {
		in  string
		n   uint64
		bad bool
	}{
		{"0", 0, false},
		{"8192", 8192, false},
		{"18446744073709551615", 1<<64 - 1, false},
		{"18446744073709551616", 0, true},
		{"0x10", 16, false},
		{"0XfF", 255, false},
		{"0xffffffffffffffff", 1<<64 - 1, false},
		{"0x10000000000000000", 0, true},
		{"0x", 0, true},
		{"", 0, true},
		{"-1", 0, true},
		{"+1", 0, true},
		{"1e3", 0, true},
		{" 1", 0, true},
		{"0b1", 0, true}, // base64 is not a numerical-value (§6.1)
		{"1_000", 0, true},
	} {
		n, err := pdu.ParseNumber(c.in)
		if (err != nil) != c.bad || n != c.n {
			t.Errorf("ParseNumber(%q) = %d, %v", c.in, n, err)
		}
	}
}

func TestParseRange(t *testing.T) {
	for _, c := range []struct {
		in     string
		lo, hi uint64
		bad    bool
	}{
		{"1~65535", 1, 65535, false},
		{"0x10~0x20", 16, 32, false},
		{"5~5", 5, 5, false},
		{"6~5", 0, 0, true},
		{"5", 0, 0, true},
		{"~5", 0, 0, true},
		{"5~", 0, 0, true},
		{"1~2~3", 0, 0, true},
	} {
		lo, hi, err := pdu.ParseRange(c.in)
		if (err != nil) != c.bad || lo != c.lo || hi != c.hi {
			t.Errorf("ParseRange(%q) = %d, %d, %v", c.in, lo, hi, err)
		}
	}
}

func TestParseBool(t *testing.T) {
	for _, c := range []struct {
		in  string
		v   bool
		bad bool
	}{{"Yes", true, false}, {"No", false, false}, {"yes", false, true}, {"NO", false, true}, {"", false, true}, {"Yes ", false, true}} {
		v, err := pdu.ParseBool(c.in)
		if (err != nil) != c.bad || v != c.v {
			t.Errorf("ParseBool(%q) = %v, %v", c.in, v, err)
		}
	}
	if pdu.FormatBool(true) != "Yes" || pdu.FormatBool(false) != "No" {
		t.Error("FormatBool")
	}
	if got := pdu.ParseList("CHAP,None"); !reflect.DeepEqual(got, []string{"CHAP", "None"}) {
		t.Errorf("ParseList: %q", got)
	}
}

func TestParseBinary(t *testing.T) {
	k := bytes.Repeat([]byte{0x5a}, 1024)
	for _, c := range []struct {
		in  string
		max int
		out []byte
		bad bool
	}{
		{"0x0102ff", 16, []byte{1, 2, 0xff}, false},
		{"0XABcd", 16, []byte{0xab, 0xcd}, false},
		// RFC 7143 §6.1: n hex digits are (n+1)/2 bytes, the most
		// significant digit first, so an odd count has an implied leading 0.
		{"0xabc", 16, []byte{0x0a, 0xbc}, false},
		{"0x1", 16, []byte{1}, false},
		{"0xabc", 1, nil, true},
		{"0x" + strings.Repeat("5a", 1024), 1024, k, false},
		{"0x" + strings.Repeat("5a", 1025), 1024, nil, true},
		{"0x" + "1" + strings.Repeat("5a", 1024), 1024, nil, true},
		{"0x0g", 16, nil, true},
		{"0x", 16, nil, true},
		{"0b" + base64.StdEncoding.EncodeToString(k), 1024, k, false},
		{"0B" + base64.StdEncoding.EncodeToString([]byte{1, 2, 3, 4}), 16, []byte{1, 2, 3, 4}, false},
		// §6.1: pad digits are optional.
		{"0b" + base64.RawStdEncoding.EncodeToString([]byte{1, 2, 3, 4}), 16, []byte{1, 2, 3, 4}, false},
		{"0b" + base64.StdEncoding.EncodeToString(make([]byte, 1025)), 1024, nil, true},
		{"0b" + base64.RawStdEncoding.EncodeToString(make([]byte, 1025)), 1024, nil, true},
		{"0bA", 16, nil, true}, // 4k+1 base64 digits cannot be
		{"0b!!!!", 16, nil, true},
		{"0bAA=A", 16, nil, true},
		{"12", 16, nil, true},
		{"0y12", 16, nil, true},
		{"", 16, nil, true},
	} {
		out, err := pdu.ParseBinary(c.in, c.max)
		if (err != nil) != c.bad || !bytes.Equal(out, c.out) {
			t.Errorf("ParseBinary(%.20q, %d) = %x, %v", c.in, c.max, out, err)
		}
	}
	if pdu.FormatHex([]byte{0, 0xab}) != "0x00ab" {
		t.Error("FormatHex")
	}
}
