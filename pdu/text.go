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
// pair must end with a NUL; keys must be valid names of at most MaxKeyLen
// bytes; values at most MaxValueLen bytes, or a binary encoding of at most
// MaxBinaryValueLen bytes.
func ParseText(b []byte, lim TextLimits) ([]KV, error) {
	maxPairs := lim.MaxPairs
	if maxPairs <= 0 {
		maxPairs = 1024
	}
	var kvs []KV
	for off := 0; off < len(b); {
		end := bytes.IndexByte(b[off:], 0)
		if end < 0 {
			return nil, &TextError{Offset: off, Reason: "last pair is not terminated by NUL"}
		}
		pair := b[off : off+end]
		if len(pair) == 0 {
			// Some targets pad with extra NULs; an empty pair carries nothing.
			off++
			continue
		}
		eq := bytes.IndexByte(pair, '=')
		if eq < 0 {
			return nil, &TextError{Offset: off, Reason: "pair has no '='"}
		}
		key, val := pair[:eq], pair[eq+1:]
		if err := checkKey(key); err != "" {
			k := string(key)
			if len(k) > MaxKeyLen {
				k = k[:MaxKeyLen] + "..."
			}
			return nil, &TextError{Offset: off, Key: k, Reason: err}
		}
		if err := checkValueLen(val); err != "" {
			return nil, &TextError{Offset: off, Key: string(key), Reason: err}
		}
		if len(kvs) == maxPairs {
			return nil, &TextError{Offset: off, Reason: "more than " + itoa(maxPairs) + " pairs"}
		}
		k := string(key)
		if !lim.AllowDuplicates {
			for i := range kvs {
				if kvs[i].Key == k {
					return nil, &TextError{Offset: off, Key: k, Reason: "key repeated"}
				}
			}
		}
		kvs = append(kvs, KV{k, string(val)})
		off += end + 1
	}
	return kvs, nil
}

func checkKey(k []byte) string {
	if len(k) == 0 {
		return "empty key"
	}
	if len(k) > MaxKeyLen {
		return "key longer than " + itoa(MaxKeyLen) + " bytes"
	}
	for _, c := range k {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '.' || c == '-' || c == '+' || c == '@' || c == '_') {
			return fmt.Sprintf("character 0x%02x not allowed in a key", c)
		}
	}
	return ""
}

func checkValueLen(v []byte) string {
	if len(v) > 2 && v[0] == '0' {
		switch v[1] {
		case 'x', 'X':
			if len(v)-2 > 2*MaxBinaryValueLen {
				return "hex value longer than " + itoa(MaxBinaryValueLen) + " bytes"
			}
			return ""
		case 'b', 'B':
			if len(v)-2 > base64.StdEncoding.EncodedLen(MaxBinaryValueLen) {
				return "base64 value longer than " + itoa(MaxBinaryValueLen) + " bytes"
			}
			return ""
		}
	}
	if len(v) > MaxValueLen {
		return "value longer than " + itoa(MaxValueLen) + " bytes"
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
// 0b, of at most max bytes.
func ParseBinary(v string, max int) ([]byte, error) {
	if len(v) < 3 || v[0] != '0' {
		return nil, fmt.Errorf("iscsi: binary value without 0x or 0b prefix")
	}
	var b []byte
	var err error
	switch v[1] {
	case 'x', 'X':
		s := v[2:]
		if len(s)/2 > max {
			return nil, fmt.Errorf("iscsi: binary value longer than %d bytes", max)
		}
		if len(s)%2 == 1 {
			// RFC 7143 §6.1: an odd number of hex digits has an implied leading zero.
			s = "0" + s
		}
		b, err = hex.DecodeString(s)
	case 'b', 'B':
		s := v[2:]
		if base64.StdEncoding.DecodedLen(len(s)) > max+2 {
			return nil, fmt.Errorf("iscsi: binary value longer than %d bytes", max)
		}
		b, err = base64.StdEncoding.DecodeString(s)
	default:
		return nil, fmt.Errorf("iscsi: binary value without 0x or 0b prefix")
	}
	if err != nil {
		return nil, fmt.Errorf("iscsi: malformed binary value: %v", err)
	}
	if len(b) > max {
		return nil, fmt.Errorf("iscsi: binary value longer than %d bytes", max)
	}
	return b, nil
}

// FormatHex encodes b as a hexadecimal binary value with the 0x prefix.
func FormatHex(b []byte) string { return "0x" + hex.EncodeToString(b) }
