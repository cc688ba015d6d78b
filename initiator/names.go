package initiator

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// ErrInvalidArg is wrapped by every error about a malformed argument, such as
// a target name that breaks RFC 7143's rules (E_INVALIDARG).
var ErrInvalidArg = errors.New("invalid argument")

// maxNameLen is the longest iSCSI name, in bytes (RFC 7143 §4.2.7.1).
const maxNameLen = 223

// NormalizeName checks an iSCSI name against RFC 7143 §4.2.7 (iqn., eui. and
// naa. formats) and returns it normalized: iSCSI names compare without
// regard to case, so the normal form is lower case. A malformed name returns
// an error wrapping ErrInvalidArg.
func NormalizeName(name string) (string, error) {
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("%w: iSCSI name %q: %s", ErrInvalidArg, name, why)
	}
	switch {
	case name == "":
		return bad("empty")
	case len(name) > maxNameLen:
		return bad(fmt.Sprintf("longer than %d bytes", maxNameLen))
	case !utf8.ValidString(name):
		return bad("not valid UTF-8")
	}
	n := strings.ToLower(name)
	for _, r := range n {
		if r < 0x80 {
			if !('a' <= r && r <= 'z' || '0' <= r && r <= '9' || r == '-' || r == '.' || r == ':') {
				return bad(fmt.Sprintf("character %q not allowed", r))
			}
		} else if !unicode.IsLetter(r) && !unicode.IsDigit(r) {
			return bad(fmt.Sprintf("character %q not allowed", r))
		}
	}
	switch {
	case strings.HasPrefix(n, "iqn."):
		return checkIQN(name, n)
	case strings.HasPrefix(n, "eui."):
		if !isHex(n[4:], 16) {
			return bad("eui. must be followed by 16 hexadecimal digits")
		}
	case strings.HasPrefix(n, "naa."):
		if !isHex(n[4:], 16) && !isHex(n[4:], 32) {
			return bad("naa. must be followed by 16 or 32 hexadecimal digits")
		}
	default:
		return bad("must start with iqn., eui. or naa.")
	}
	return n, nil
}

// checkIQN checks "iqn." yyyy-mm "." reversed-domain [":" anything].
func checkIQN(orig, n string) (string, error) {
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("%w: iSCSI name %q: %s", ErrInvalidArg, orig, why)
	}
	rest := n[4:]
	if len(rest) < 8 || rest[4] != '-' || rest[7] != '.' {
		return bad("iqn. must be followed by a date yyyy-mm and a dot")
	}
	year, month := rest[:4], rest[5:7]
	if !isDigits(year) || !isDigits(month) || month < "01" || month > "12" {
		return bad("invalid date " + rest[:7])
	}
	auth := rest[8:]
	if i := strings.IndexByte(auth, ':'); i >= 0 {
		if i == len(auth)-1 {
			return bad("empty string after ':'")
		}
		auth = auth[:i]
	}
	if auth == "" {
		return bad("no naming authority after the date")
	}
	for _, label := range strings.Split(auth, ".") {
		if label == "" {
			return bad("empty label in the naming authority")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return bad("naming authority label " + label + " starts or ends with '-'")
		}
	}
	return n, nil
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}
