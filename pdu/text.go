package pdu

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// Length limits of RFC 7143 §6.1 and §12.
const (
	// MaxKeyLen is the longest key name.
	MaxKeyLen = 63
	// MaxValueLen is the longest value, not counting its encoding.
	MaxValueLen = 255
	// MaxBinaryValueLen is the longest decoded binary value (CHAP_C, CHAP_R).
	MaxBinaryValueLen = 1024
)

// KV is one key=value pair of a text segment.
type KV struct {
	Key, Value string
}

// TextLimits bounds what ParseText accepts beyond the RFC's per-pair limits.
type TextLimits struct {
	// MaxPairs is the largest number of pairs; 0 means 1024.
	MaxPairs int
	// AllowDuplicates accepts a key more than once, as a SendTargets answer
	// repeats TargetName and TargetAddress. Login and negotiation refuse it.
	AllowDuplicates bool
}

// TextError reports a malformed text segment.
type TextError struct {
	Offset int    // byte offset of the pair in the segment
	Key    string // the key, when it was read
	Reason string
}

func (e *TextError) Error() string {
	if e.Key != "" {
		return fmt.Sprintf("iscsi: text key %q at offset %d: %s", e.Key, e.Offset, e.Reason)
	}
	return fmt.Sprintf("iscsi: text at offset %d: %s", e.Offset, e.Reason)
}

// ParseText splits a text segment into its key=value pairs, in order. Every
// pair must end with a NUL; keys must be valid key names (RFC 7143 §6.1: a
// standard-label starting with a capital letter, or an X#, Y# or Z# public
// extension key) of at most MaxKeyLen bytes; values at most MaxValueLen bytes
// between commas, or a hex or base64 binary value of at most
// MaxBinaryValueLen bytes once decoded.
//
// The keys and values share one copy of b: a login's worth of pairs costs
// two allocations, the copy and the slice.
func ParseText(b []byte, lim TextLimits) ([]KV, error) {
	maxPairs := lim.MaxPairs
	if maxPairs <= 0 {
		maxPairs = 1024
	}
	if len(b) == 0 {
		return nil, nil
	}
	// Counting NULs bounds the pairs; the cap keeps a hostile count from
	// sizing the slice.
	kvs := make([]KV, 0, min(bytes.Count(b, nul), maxPairs+1))
	s := string(b)
	var seen map[string]struct{}
	for off := 0; off < len(s); {
		end := strings.IndexByte(s[off:], 0)
		if end < 0 {
			return nil, &TextError{Offset: off, Reason: "last pair is not terminated by NUL"}
		}
		pair := s[off : off+end]
		if len(pair) == 0 {
			// Some targets pad with extra NULs; an empty pair carries nothing.
			off++
			continue
		}
		eq := strings.IndexByte(pair, '=')
		if eq < 0 {
			return nil, &TextError{Offset: off, Reason: "pair has no '='"}
		}
		key, val := pair[:eq], pair[eq+1:]
		if err := checkKey(key); err != "" {
			k := key
			if len(k) > MaxKeyLen {
				k = k[:MaxKeyLen] + "..."
			}
			return nil, &TextError{Offset: off, Key: k, Reason: err}
		}
		if err := checkValueLen(val); err != "" {
			return nil, &TextError{Offset: off, Key: key, Reason: err}
		}
		if len(kvs) == maxPairs {
			return nil, &TextError{Offset: off, Reason: "more than " + itoa(maxPairs) + " pairs"}
		}
		if !lim.AllowDuplicates {
			// A scan is cheapest for the dozen keys of a login; past that a
			// map keeps a long hostile segment from costing n² compares.
			dup := false
			if seen == nil && len(kvs) < 32 {
				for i := range kvs {
					if kvs[i].Key == key {
						dup = true
						break
					}
				}
			} else {
				if seen == nil {
					seen = make(map[string]struct{}, 2*len(kvs))
					for i := range kvs {
						seen[kvs[i].Key] = struct{}{}
					}
				}
				_, dup = seen[key]
				seen[key] = struct{}{}
			}
			if dup {
				return nil, &TextError{Offset: off, Key: key, Reason: "key repeated"}
			}
		}
		kvs = append(kvs, KV{key, val})
		off += end + 1
	}
	if len(kvs) == 0 {
		// Only NULs: no pairs, reported as for an empty segment.
		return nil, nil
	}
	return kvs, nil
}

var nul = []byte{0}

// checkKey checks a key name against RFC 7143 §6.1: a standard-label
// (letters, digits, '.', '-', '+', '@', '_', beginning with a capital letter)
// of at most 63 bytes. Public extension keys (§13.5.2, RFC 4850's
// X#NodeArchitecture) have '#' after their X, Y or Z.
func checkKey(k string) string {
	if len(k) == 0 {
		return "empty key"
	}
	if len(k) > MaxKeyLen {
		return "key longer than " + itoa(MaxKeyLen) + " bytes"
	}
	// §6.1 says a key begins with a capital letter, but §13.24 itself
	// defines iSCSIProtocolLevel.
	if c := k[0]; (c < 'A' || c > 'Z') && k != "iSCSIProtocolLevel" {
		return fmt.Sprintf("key begins with 0x%02x, not a capital letter", c)
	}
	for i := 1; i < len(k); i++ {
		c := k[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '.' || c == '-' || c == '+' || c == '@' || c == '_' ||
			c == '#' && i == 1 && (k[0] == 'X' || k[0] == 'Y' || k[0] == 'Z')) {
			return fmt.Sprintf("character 0x%02x not allowed in a key", c)
		}
	}
	return ""
}

// checkValueLen applies the length limits of RFC 7143 §6.1. A simple value is
// at most 255 bytes "not including the delimiter (comma or zero byte)", so
// the limit applies to each element of a list. A binary value (CHAP_C,
// CHAP_R: §12.1.3) may hold up to 1024 bytes, counted as the RFC counts the
// implicit byte-length of its encoding: (n+1)/2 for n hex digits, n*3/4 for n
// base64 characters without the trailing '='.
func checkValueLen(v string) string {
	if len(v) > 2 && v[0] == '0' {
		switch v[1] {
		case 'x', 'X':
			if n := len(v) - 2; (n+1)/2 > MaxBinaryValueLen {
				return "hex value longer than " + itoa(MaxBinaryValueLen) + " bytes"
			}
			return ""
		case 'b', 'B':
			if n := len(strings.TrimRight(v[2:], "=")); n*3/4 > MaxBinaryValueLen {
				return "base64 value longer than " + itoa(MaxBinaryValueLen) + " bytes"
			}
			return ""
		}
	}
	for len(v) > MaxValueLen {
		i := strings.IndexByte(v, ',')
		if i < 0 || i > MaxValueLen {
			return "value longer than " + itoa(MaxValueLen) + " bytes"
		}
		v = v[i+1:]
	}
	return ""
}

// AppendText appends kvs to b as a text segment: key=value pairs, each ended
// by a NUL.
func AppendText(b []byte, kvs ...KV) []byte {
	for _, kv := range kvs {
		b = append(b, kv.Key...)
		b = append(b, '=')
		b = append(b, kv.Value...)
		b = append(b, 0)
	}
	return b
}

// Lookup returns the value of key in kvs.
func Lookup(kvs []KV, key string) (string, bool) {
	for _, kv := range kvs {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return "", false
}

// ParseNumber parses a numerical value: decimal, or hexadecimal after 0x
// (RFC 7143 §6.1, number up to 64 bits).
func ParseNumber(v string) (uint64, error) {
	if len(v) > 2 && v[0] == '0' && (v[1] == 'x' || v[1] == 'X') {
		n, err := strconv.ParseUint(v[2:], 16, 64)
		if err != nil {
			return 0, fmt.Errorf("iscsi: invalid hex number %q", v)
		}
		return n, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("iscsi: invalid number %q", v)
	}
	return n, nil
}

// ParseRange parses a numerical range "lo~hi" with lo <= hi.
func ParseRange(v string) (lo, hi uint64, err error) {
	a, b, ok := strings.Cut(v, "~")
	if !ok {
		return 0, 0, fmt.Errorf("iscsi: invalid range %q: no '~'", v)
	}
	if lo, err = ParseNumber(a); err != nil {
		return 0, 0, err
	}
	if hi, err = ParseNumber(b); err != nil {
		return 0, 0, err
	}
	if lo > hi {
		return 0, 0, fmt.Errorf("iscsi: invalid range %q: low end above high end", v)
	}
	return lo, hi, nil
}

// ParseBool parses "Yes" or "No".
func ParseBool(v string) (bool, error) {
	switch v {
	case "Yes":
		return true, nil
	case "No":
		return false, nil
	}
	return false, fmt.Errorf("iscsi: invalid boolean %q: want Yes or No", v)
}

// FormatBool returns "Yes" or "No".
func FormatBool(b bool) string {
	if b {
		return "Yes"
	}
	return "No"
}

// ParseList splits a list value at its commas.
func ParseList(v string) []string { return strings.Split(v, ",") }

// ParseBinary decodes a binary value, hexadecimal after 0x or base64 after
// 0b, of at most max bytes. As RFC 7143 §6.1 defines them, an odd number of
// hex digits has an implied leading zero digit (n digits make (n+1)/2 bytes),
// and base64 padding is optional.
func ParseBinary(v string, max int) ([]byte, error) {
	if len(v) < 3 || v[0] != '0' {
		return nil, fmt.Errorf("iscsi: binary value without 0x or 0b prefix")
	}
	var b []byte
	var err error
	switch v[1] {
	case 'x', 'X':
		s := v[2:]
		if (len(s)+1)/2 > max {
			return nil, fmt.Errorf("iscsi: binary value longer than %d bytes", max)
		}
		if len(s)%2 == 1 {
			s = "0" + s
		}
		b, err = hex.DecodeString(s)
	case 'b', 'B':
		s := strings.TrimRight(v[2:], "=")
		if len(s)*3/4 > max {
			return nil, fmt.Errorf("iscsi: binary value longer than %d bytes", max)
		}
		b, err = base64.RawStdEncoding.DecodeString(s)
	default:
		return nil, fmt.Errorf("iscsi: binary value without 0x or 0b prefix")
	}
	if err != nil {
		return nil, fmt.Errorf("iscsi: malformed binary value %.20q: %v", v, err)
	}
	return b, nil
}

// FormatHex encodes b as a hexadecimal binary value with the 0x prefix.
func FormatHex(b []byte) string { return "0x" + hex.EncodeToString(b) }
