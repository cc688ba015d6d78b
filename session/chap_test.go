package session

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/goiscsi/iscsi/pdu"
)

// CHAP's response is H(identifier || secret || challenge) (RFC 1994 §4.1).
// Split "abc" and "message digest" over the three parts and the result must
// be the published digests of those strings: RFC 1321 appendix A.5 for MD5,
// FIPS 180-2 appendix B.1 for SHA-1 and SHA-256, FIPS 202 (NIST example
// values) for SHA3-256.
func TestCHAPResponseKnownVectors(t *testing.T) {
	tests := []struct {
		alg       int
		id        byte
		secret    string
		challenge string
		want      string
	}{
		{CHAPMD5, 'a', "b", "c", "900150983cd24fb0d6963f7d28e17f72"},
		{CHAPMD5, 'm', "essage ", "digest", "f96b697d7cb7938d525a2f31aaf161d0"},
		{CHAPSHA1, 'a', "b", "c", "a9993e364706816aba3e25717850c26c9cd0d89d"},
		{CHAPSHA256, 'a', "b", "c", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
		{CHAPSHA3256, 'a', "b", "c", "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"},
	}
	for _, tt := range tests {
		got := hex.EncodeToString(chapResponse(tt.alg, tt.id, tt.secret, []byte(tt.challenge)))
		if got != tt.want {
			t.Errorf("CHAP_A=%d %q|%q|%q: %s, want %s", tt.alg, tt.id, tt.secret, tt.challenge, got, tt.want)
		}
	}
}

// The keys as they go over the wire: CHAP_I=97 (0x61, 'a'), CHAP_C=0x63
// ("c") and secret "b" make CHAP_R the MD5 of "abc".
func TestCHAPAnswerVector(t *testing.T) {
	var sent [][]byte
	st := &chapState{cfg: &CHAP{User: "alice", Secret: "b", AllowShortSecrets: true, Algorithms: []int{CHAPMD5}}, sent: &sent}
	if st.offer() != "5" {
		t.Errorf("offer %q", st.offer())
	}
	out, err := st.answer("5", "97", "0x63")
	if err != nil {
		t.Fatal(err)
	}
	want := kvs("CHAP_N", "alice", "CHAP_R", "0x900150983cd24fb0d6963f7d28e17f72")
	if len(out) != 2 || out[0] != want[0] || out[1] != want[1] {
		t.Errorf("answer %v, want %v", out, want)
	}
	// Base64 challenge, same bytes.
	out, err = st.answer("5", "0x61", "0bYw==")
	if err != nil || out[1].Value != "0x900150983cd24fb0d6963f7d28e17f72" {
		t.Errorf("base64 challenge, hex identifier: %v %v", out, err)
	}
	if (&CHAP{Secret: "123456789012"}).algorithms()[0] != CHAPSHA3256 {
		t.Errorf("default algorithms do not prefer SHA3-256")
	}
}

func TestCHAPAnswerRefused(t *testing.T) {
	long := "0x" + strings.Repeat("ab", 1025)
	tests := []struct {
		name    string
		algs    []int
		sent    [][]byte
		a, i, c string
		key     string
	}{
		{"reflected challenge", nil, [][]byte{{1, 2, 3, 4}}, "5", "1", "0x01020304", "CHAP_C"},
		{"challenge over 1024 bytes", nil, nil, "5", "1", long, "CHAP_C"},
		{"empty challenge", nil, nil, "5", "1", "", "CHAP_C"},
		{"challenge not binary", nil, nil, "5", "1", "hello", "CHAP_C"},
		{"challenge with bad hex", nil, nil, "5", "1", "0x12zz", "CHAP_C"},
		{"identifier 256", nil, nil, "5", "256", "0x0102", "CHAP_I"},
		{"identifier -1", nil, nil, "5", "-1", "0x0102", "CHAP_I"},
		{"identifier not a number", nil, nil, "5", "one", "0x0102", "CHAP_I"},
		{"algorithm not offered", []int{CHAPMD5}, nil, "7", "1", "0x0102", "CHAP_A"},
		{"algorithm unknown", nil, nil, "9", "1", "0x0102", "CHAP_A"},
		{"algorithm Reject", nil, nil, "Reject", "1", "0x0102", "CHAP_A"},
		{"algorithm list", nil, nil, "5,7", "1", "0x0102", "CHAP_A"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sent := tt.sent
			st := &chapState{cfg: &CHAP{User: "u", Secret: "0123456789abcdef", Algorithms: tt.algs}, sent: &sent}
			_, err := st.answer(tt.a, tt.i, tt.c)
			var ne *NegotiationError
			if !errors.As(err, &ne) || ne.Key != tt.key {
				t.Fatalf("err %v, want a NegotiationError on %s", err, tt.key)
			}
			if strings.Contains(err.Error(), "0123456789abcdef") {
				t.Errorf("error shows the secret: %v", err)
			}
		})
	}
}

// RFC 7143 §6.1: a hex constant with an odd number of digits has an implied
// leading zero, so 0xabc is the two bytes 0a bc. We follow the RFC rather
// than refuse it, and answer for exactly those bytes.
func TestCHAPOddHexChallenge(t *testing.T) {
	var sent [][]byte
	st := &chapState{cfg: &CHAP{User: "u", Secret: "0123456789abcdef", Algorithms: []int{CHAPMD5}}, sent: &sent}
	out, err := st.answer("5", "7", "0xabc")
	if err != nil {
		t.Fatal(err)
	}
	h := md5.Sum(append(append([]byte{7}, "0123456789abcdef"...), 0x0a, 0xbc))
	if want := "0x" + hex.EncodeToString(h[:]); out[1].Value != want {
		t.Errorf("CHAP_R %s, want %s", out[1].Value, want)
	}
}

func TestCHAPMutual(t *testing.T) {
	for _, alg := range []int{CHAPMD5, CHAPSHA1, CHAPSHA256, CHAPSHA3256} {
		var sent [][]byte
		cfg := &CHAP{User: "u", Secret: "initiator-secret", TargetUser: "tgt", TargetSecret: "target-secret-1", Algorithms: []int{alg}}
		st := &chapState{cfg: cfg, sent: &sent}
		out, err := st.answer(strconv.Itoa(alg), "3", "0x00112233445566778899aabbccddeeff")
		if err != nil {
			t.Fatalf("alg %d: %v", alg, err)
		}
		i, _ := pdu.Lookup(out, "CHAP_I")
		c, _ := pdu.Lookup(out, "CHAP_C")
		if i == "" || c == "" || len(sent) != 1 {
			t.Fatalf("alg %d: mutual answer %v, sent %d challenges", alg, out, len(sent))
		}
		ch, _ := pdu.ParseBinary(c, 1024)
		if len(ch) < 16 {
			t.Errorf("alg %d: our challenge is %d bytes", alg, len(ch))
		}
		id, _ := parseNum(i)
		right := pdu.FormatHex(chapResponse(alg, byte(id), cfg.TargetSecret, ch))
		if err := st.verify("tgt", right, true); err != nil {
			t.Errorf("alg %d: right response refused: %v", alg, err)
		}
		// A target answering with what we would answer (our own secret)
		// is not the target.
		ours := pdu.FormatHex(chapResponse(alg, byte(id), cfg.Secret, ch))
		bad := map[string]struct {
			n, r string
			ok   bool
			key  string
		}{
			"wrong response":  {"tgt", ours, true, "CHAP_R"},
			"no response":     {"tgt", "", false, "CHAP_R"},
			"malformed":       {"tgt", "0xzz", true, "CHAP_R"},
			"truncated":       {"tgt", right[:len(right)-2], true, "CHAP_R"},
			"wrong user name": {"mallory", right, true, "CHAP_N"},
		}
		for name, b := range bad {
			err := st.verify(b.n, b.r, b.ok)
			var ne *NegotiationError
			if !errors.As(err, &ne) || ne.Key != b.key {
				t.Errorf("alg %d, %s: %v, want a NegotiationError on %s", alg, name, err, b.key)
			}
		}
		// A second connection of the session receiving our challenge back
		// refuses it (reflection across connections).
		st2 := &chapState{cfg: cfg, sent: &sent}
		if _, err := st2.answer(st.offer(), "9", c); err == nil {
			t.Errorf("alg %d: reflected challenge accepted on a second connection", alg)
		}
	}
}

func TestCHAPSecrets(t *testing.T) {
	tests := []struct {
		name string
		c    CHAP
		want error // nil, ErrShortSecret, or any NegotiationError
	}{
		{"12 bytes", CHAP{User: "u", Secret: "123456789012"}, nil},
		{"11 bytes", CHAP{User: "u", Secret: "12345678901"}, ErrShortSecret},
		{"short target secret", CHAP{User: "u", Secret: "123456789012", TargetSecret: "short"}, ErrShortSecret},
		{"short but allowed", CHAP{User: "u", Secret: "abc", AllowShortSecrets: true}, nil},
		{"mutual short but allowed", CHAP{User: "u", Secret: "abc", TargetSecret: "def", AllowShortSecrets: true}, nil},
		{"equal secrets", CHAP{User: "u", Secret: "123456789012", TargetSecret: "123456789012"}, &NegotiationError{}},
		{"equal short secrets, allowed short", CHAP{User: "u", Secret: "abc", TargetSecret: "abc", AllowShortSecrets: true}, &NegotiationError{}},
		{"no secret", CHAP{User: "u", AllowShortSecrets: true}, &NegotiationError{}},
		{"unknown algorithm", CHAP{User: "u", Secret: "123456789012", Algorithms: []int{5, 42}}, &NegotiationError{}},
	}
	for _, tt := range tests {
		err := tt.c.check()
		switch want := tt.want.(type) {
		case nil:
			if err != nil {
				t.Errorf("%s: %v", tt.name, err)
			}
		case *NegotiationError:
			if !errors.As(err, &want) {
				t.Errorf("%s: %v, want a NegotiationError", tt.name, err)
			}
		default:
			if !errors.Is(err, want) {
				t.Errorf("%s: %v, want %v", tt.name, err, want)
			}
		}
	}
	// Login refuses a short secret before it dials anything.
	cfg := testConfig()
	cfg.CHAP = &CHAP{User: "u", Secret: "short"}
	cfg.Dial = nil
	cfg.Portal = "192.0.2.1:3260" // TEST-NET-1: must not be dialed
	if _, err := Login(context.Background(), cfg); !errors.Is(err, ErrShortSecret) {
		t.Errorf("Login with a short secret: %v", err)
	}
}
