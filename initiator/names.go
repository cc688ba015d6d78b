package initiator

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/cases"
	"golang.org/x/text/unicode/bidi"
	"golang.org/x/text/unicode/norm"
	"golang.org/x/text/unicode/rangetable"
)

// ErrInvalidArg is wrapped by every error about a malformed argument, such as
// a target name that breaks RFC 7143's rules (E_INVALIDARG).
var ErrInvalidArg = errors.New("invalid argument")

// maxNameLen is the longest iSCSI name, in bytes (RFC 7143 §4.2.7.1).
const maxNameLen = 223

// maxInputLen bounds the name given to NormalizeName before stringprep:
// mapping and NFKC may shorten a name (a fullwidth letter is 3 bytes, its
// normal form 1), so the input may be longer than maxNameLen, but not
// without bound.
const maxInputLen = 4 * maxNameLen

// NormalizeName prepares an iSCSI name with the stringprep profile of
// RFC 3722, checks the result against RFC 7143 §4.2.7 (iqn., eui. and naa.
// formats) and returns it. The prepared form is the name: iSCSI names
// compare as prepared strings (RFC 7143 §4.2.7.1), so a name given in upper
// case, in fullwidth letters or with a ligature has one normal form, which
// is what an initiator sends and looks sessions up by. A name that
// stringprep or the format refuses returns an error wrapping ErrInvalidArg.
func NormalizeName(name string) (string, error) {
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("%w: iSCSI name %q: %s", ErrInvalidArg, name, why)
	}
	switch {
	case name == "":
		return bad("empty")
	case len(name) > maxInputLen:
		return bad(fmt.Sprintf("%d bytes, too long to prepare into a name of at most %d", len(name), maxNameLen))
	case !utf8.ValidString(name):
		return bad("not valid UTF-8")
	}
	n, err := stringprepISCSI(name)
	if err != nil {
		return bad(err.Error())
	}
	switch {
	case n == "":
		return bad("empty after stringprep (RFC 3722)")
	case len(n) > maxNameLen:
		return bad(fmt.Sprintf("longer than %d bytes", maxNameLen))
	}
	// RFC 7143 §4.2.7.1: ASCII dash, dot, colon, lower-case letters and
	// digits, and whatever else the stringprep profile lets through
	// (upper case is mapped away by then).
	for _, r := range n {
		if r < 0x80 && !('a' <= r && r <= 'z' || '0' <= r && r <= '9' || r == '-' || r == '.' || r == ':') {
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

// stringprepISCSI applies the iSCSI stringprep profile (RFC 3722, on the
// framework of RFC 3454) to s, valid UTF-8:
//
//   - §3, §8: the repertoire is Unicode 3.2; a name holding a code point
//     unassigned there (RFC 3454 table A.1) is refused. An initiator sends
//     the names it is given as its own or as the target's identity, so they
//     are "stored strings" in RFC 3454 §7's terms, not queries.
//   - §4: map table B.1 to nothing and case-fold per table B.2;
//   - §5: normalize with Unicode form KC;
//   - §6: refuse tables C.1.1 to C.9 and the ASCII punctuation and U+3002
//     of §6.1;
//   - §7: the bidirectional rules of RFC 3454 §6.
//
// Table B.2 is full case folding closed under NFKC; folding, normalizing,
// and folding and normalizing again where the first pass left something to
// fold (ℂ: NFKC gives C, which folds to c) gives what B.2 then NFKC give.
func stringprepISCSI(s string) (string, error) {
	for _, r := range s {
		if !inUnicode32(r) && !isNoncharacter(r) {
			return "", fmt.Errorf("code point %U is unassigned in Unicode 3.2 (RFC 3454 table A.1, RFC 3722 §8)", r)
		}
	}
	mapped := strings.Map(func(r rune) rune {
		if mapsToNothing(r) {
			return -1
		}
		return r
	}, s)
	fold := cases.Fold()
	out := norm.NFKC.String(fold.String(mapped))
	if again := norm.NFKC.String(fold.String(out)); again != out {
		out = again
	}
	hasRandAL, hasL := false, false
	for _, r := range out {
		if why := prohibited(r); why != "" {
			return "", fmt.Errorf("character %U is prohibited (%s)", r, why)
		}
		switch bidiClass(r) {
		case bidi.R, bidi.AL:
			hasRandAL = true
		case bidi.L:
			hasL = true
		}
	}
	if hasRandAL {
		// RFC 3454 §6: a string with right-to-left characters holds no
		// left-to-right ones and starts and ends with right-to-left ones.
		first, _ := utf8.DecodeRuneInString(out)
		last, _ := utf8.DecodeLastRuneInString(out)
		if hasL || !isRandAL(first) || !isRandAL(last) {
			return "", errors.New("mixes right-to-left and left-to-right characters (RFC 3454 §6, RFC 3722 §7)")
		}
	}
	return out, nil
}

func bidiClass(r rune) bidi.Class {
	p, _ := bidi.LookupRune(r)
	return p.Class()
}

func isRandAL(r rune) bool {
	c := bidiClass(r)
	return c == bidi.R || c == bidi.AL
}

// mapsToNothing is RFC 3454 table B.1, "commonly mapped to nothing".
func mapsToNothing(r rune) bool {
	switch {
	case r == 0x00AD, r == 0x034F, r == 0x1806, 0x180B <= r && r <= 0x180D,
		0x200B <= r && r <= 0x200D, r == 0x2060, 0xFE00 <= r && r <= 0xFE0F, r == 0xFEFF:
		return true
	}
	return false
}

// prohibitedRange is a range of code points RFC 3722 §6 prohibits in a
// prepared name, with the table that says so.
type prohibitedRange struct {
	lo, hi rune
	table  string
}

// prohibitedRanges are RFC 3454 tables C.1.1 to C.9 and RFC 3722 §6.1,
// which is all of ASCII but letters, digits, '-', '.' and ':', and U+3002
// IDEOGRAPHIC FULL STOP (read as a dot by some input methods).
var prohibitedRanges = []prohibitedRange{
	{0x0000, 0x002C, "RFC 3722 §6.1, ASCII control, space and punctuation"},
	{0x002F, 0x002F, "RFC 3722 §6.1, ASCII punctuation"},
	{0x003B, 0x0040, "RFC 3722 §6.1, ASCII punctuation"},
	{0x005B, 0x0060, "RFC 3722 §6.1, ASCII punctuation"},
	{0x007B, 0x007F, "RFC 3722 §6.1, ASCII punctuation and DEL"},
	{0x3002, 0x3002, "RFC 3722 §6.1, ideographic full stop"},
	// C.1.1 (U+0020) and C.2.1 (U+0000-001F, U+007F) are in the ASCII
	// ranges above.
	{0x0080, 0x009F, "RFC 3454 C.2.2, non-ASCII control"},
	{0x00A0, 0x00A0, "RFC 3454 C.1.2, non-ASCII space"},
	{0x0340, 0x0341, "RFC 3454 C.8, deprecated"},
	{0x06DD, 0x06DD, "RFC 3454 C.2.2, non-ASCII control"},
	{0x070F, 0x070F, "RFC 3454 C.2.2, non-ASCII control"},
	{0x1680, 0x1680, "RFC 3454 C.1.2, non-ASCII space"},
	{0x180E, 0x180E, "RFC 3454 C.2.2, non-ASCII control"},
	{0x2000, 0x200B, "RFC 3454 C.1.2, non-ASCII space"},
	{0x200C, 0x200D, "RFC 3454 C.2.2, non-ASCII control"},
	{0x200E, 0x200F, "RFC 3454 C.8, changes display properties"},
	{0x2028, 0x2029, "RFC 3454 C.2.2, non-ASCII control"},
	{0x202A, 0x202E, "RFC 3454 C.8, changes display properties"},
	{0x202F, 0x202F, "RFC 3454 C.1.2, non-ASCII space"},
	{0x205F, 0x205F, "RFC 3454 C.1.2, non-ASCII space"},
	{0x2060, 0x2063, "RFC 3454 C.2.2, non-ASCII control"},
	{0x206A, 0x206F, "RFC 3454 C.2.2 and C.8, deprecated control"},
	{0x2FF0, 0x2FFB, "RFC 3454 C.7, inappropriate for canonical representation"},
	{0x3000, 0x3000, "RFC 3454 C.1.2, non-ASCII space"},
	{0xD800, 0xDFFF, "RFC 3454 C.5, surrogate"},
	{0xE000, 0xF8FF, "RFC 3454 C.3, private use"},
	{0xFDD0, 0xFDEF, "RFC 3454 C.4, non-character"},
	{0xFEFF, 0xFEFF, "RFC 3454 C.2.2, non-ASCII control"},
	{0xFFF9, 0xFFFC, "RFC 3454 C.2.2 and C.6, inappropriate for plain text"},
	{0xFFFD, 0xFFFD, "RFC 3454 C.6, inappropriate for plain text"},
	{0x1D173, 0x1D17A, "RFC 3454 C.2.2, non-ASCII control"},
	{0xE0001, 0xE0001, "RFC 3454 C.9, tagging"},
	{0xE0020, 0xE007F, "RFC 3454 C.9, tagging"},
	{0xF0000, 0xFFFFD, "RFC 3454 C.3, private use"},
	{0x100000, 0x10FFFD, "RFC 3454 C.3, private use"},
}

// prohibited names the table that prohibits r, or returns "".
func prohibited(r rune) string {
	if isNoncharacter(r) {
		return "RFC 3454 C.4, non-character"
	}
	for _, p := range prohibitedRanges {
		if p.lo <= r && r <= p.hi {
			return p.table
		}
	}
	return ""
}

// isNoncharacter is RFC 3454 table C.4: U+FDD0-FDEF and the last two code
// points of every plane.
func isNoncharacter(r rune) bool {
	return 0xFDD0 <= r && r <= 0xFDEF || r&0xFFFE == 0xFFFE
}

// assigned41 are the code points assigned in Unicode 4.1, the oldest
// version golang.org/x/text keeps; Unicode 3.2 (RFC 3454 §1.2, whose table
// A.1 lists the code points it leaves unassigned) is assigned41 less
// addedIn40And41.
var assigned41 = rangetable.Assigned("4.1.0")

// inUnicode32 reports whether r is assigned in Unicode 3.2.
func inUnicode32(r rune) bool {
	return unicode.Is(assigned41, r) && !unicode.Is(addedIn40And41, r)
}

// addedIn40And41 are the code points that Unicode 4.0 and 4.1 assigned
// (Age=4.0 and Age=4.1 in DerivedAge.txt of the UCD).
var addedIn40And41 = &unicode.RangeTable{
	R16: []unicode.Range16{
		{0x0221, 0x0221, 1}, {0x0234, 0x0241, 1}, {0x02AE, 0x02AF, 1}, {0x02EF, 0x02FF, 1},
		{0x0350, 0x035F, 1}, {0x03F7, 0x03FF, 1}, {0x04F6, 0x04F7, 1}, {0x05A2, 0x05A2, 1},
		{0x05C5, 0x05C7, 1}, {0x0600, 0x0603, 1}, {0x060B, 0x060B, 1}, {0x060D, 0x0615, 1},
		{0x061E, 0x061E, 1}, {0x0656, 0x065E, 1}, {0x06EE, 0x06EF, 1}, {0x06FF, 0x06FF, 1},
		{0x072D, 0x072F, 1}, {0x074D, 0x076D, 1}, {0x0904, 0x0904, 1}, {0x097D, 0x097D, 1},
		{0x09BD, 0x09BD, 1}, {0x09CE, 0x09CE, 1}, {0x0A01, 0x0A01, 1}, {0x0A03, 0x0A03, 1},
		{0x0A8C, 0x0A8C, 1}, {0x0AE1, 0x0AE3, 1}, {0x0AF1, 0x0AF1, 1}, {0x0B35, 0x0B35, 1},
		{0x0B71, 0x0B71, 1}, {0x0BB6, 0x0BB6, 1}, {0x0BE6, 0x0BE6, 1}, {0x0BF3, 0x0BFA, 1},
		{0x0CBC, 0x0CBD, 1}, {0x0FD0, 0x0FD1, 1}, {0x10F9, 0x10FA, 1}, {0x10FC, 0x10FC, 1},
		{0x1207, 0x1207, 1}, {0x1247, 0x1247, 1}, {0x1287, 0x1287, 1}, {0x12AF, 0x12AF, 1},
		{0x12CF, 0x12CF, 1}, {0x12EF, 0x12EF, 1}, {0x130F, 0x130F, 1}, {0x131F, 0x131F, 1},
		{0x1347, 0x1347, 1}, {0x135F, 0x1360, 1}, {0x1380, 0x1399, 1}, {0x17DD, 0x17DD, 1},
		{0x17F0, 0x17F9, 1}, {0x1900, 0x191C, 1}, {0x1920, 0x192B, 1}, {0x1930, 0x193B, 1},
		{0x1940, 0x1940, 1}, {0x1944, 0x196D, 1}, {0x1970, 0x1974, 1}, {0x1980, 0x19A9, 1},
		{0x19B0, 0x19C9, 1}, {0x19D0, 0x19D9, 1}, {0x19DE, 0x1A1B, 1}, {0x1A1E, 0x1A1F, 1},
		{0x1D00, 0x1DC3, 1}, {0x2053, 0x2056, 1}, {0x2058, 0x205E, 1}, {0x2090, 0x2094, 1},
		{0x20B2, 0x20B5, 1}, {0x20EB, 0x20EB, 1}, {0x213B, 0x213C, 1}, {0x214C, 0x214C, 1},
		{0x23CF, 0x23DB, 1}, {0x24FF, 0x24FF, 1}, {0x2614, 0x2615, 1}, {0x2618, 0x2618, 1},
		{0x267E, 0x267F, 1}, {0x268A, 0x269C, 1}, {0x26A0, 0x26B1, 1}, {0x27C0, 0x27C6, 1},
		{0x2B00, 0x2B13, 1}, {0x2C00, 0x2C2E, 1}, {0x2C30, 0x2C5E, 1}, {0x2C80, 0x2CEA, 1},
		{0x2CF9, 0x2D25, 1}, {0x2D30, 0x2D65, 1}, {0x2D6F, 0x2D6F, 1}, {0x2D80, 0x2D96, 1},
		{0x2DA0, 0x2DA6, 1}, {0x2DA8, 0x2DAE, 1}, {0x2DB0, 0x2DB6, 1}, {0x2DB8, 0x2DBE, 1},
		{0x2DC0, 0x2DC6, 1}, {0x2DC8, 0x2DCE, 1}, {0x2DD0, 0x2DD6, 1}, {0x2DD8, 0x2DDE, 1},
		{0x2E00, 0x2E17, 1}, {0x2E1C, 0x2E1D, 1}, {0x31C0, 0x31CF, 1}, {0x321D, 0x321E, 1},
		{0x3250, 0x3250, 1}, {0x327C, 0x327E, 1}, {0x32CC, 0x32CF, 1}, {0x3377, 0x337A, 1},
		{0x33DE, 0x33DF, 1}, {0x33FF, 0x33FF, 1}, {0x4DC0, 0x4DFF, 1}, {0x9FA6, 0x9FBB, 1},
		{0xA700, 0xA716, 1}, {0xA800, 0xA82B, 1}, {0xFA70, 0xFAD9, 1}, {0xFDFD, 0xFDFD, 1},
		{0xFE10, 0xFE19, 1}, {0xFE47, 0xFE48, 1},
	},
	R32: []unicode.Range32{
		{0x10000, 0x1000B, 1}, {0x1000D, 0x10026, 1}, {0x10028, 0x1003A, 1}, {0x1003C, 0x1003D, 1},
		{0x1003F, 0x1004D, 1}, {0x10050, 0x1005D, 1}, {0x10080, 0x100FA, 1}, {0x10100, 0x10102, 1},
		{0x10107, 0x10133, 1}, {0x10137, 0x1018A, 1}, {0x10380, 0x1039D, 1}, {0x1039F, 0x103C3, 1},
		{0x103C8, 0x103D5, 1}, {0x10426, 0x10427, 1}, {0x1044E, 0x1049D, 1}, {0x104A0, 0x104A9, 1},
		{0x10800, 0x10805, 1}, {0x10808, 0x10808, 1}, {0x1080A, 0x10835, 1}, {0x10837, 0x10838, 1},
		{0x1083C, 0x1083C, 1}, {0x1083F, 0x1083F, 1}, {0x10A00, 0x10A03, 1}, {0x10A05, 0x10A06, 1},
		{0x10A0C, 0x10A13, 1}, {0x10A15, 0x10A17, 1}, {0x10A19, 0x10A33, 1}, {0x10A38, 0x10A3A, 1},
		{0x10A3F, 0x10A47, 1}, {0x10A50, 0x10A58, 1}, {0x1D200, 0x1D245, 1}, {0x1D300, 0x1D356, 1},
		{0x1D4C1, 0x1D4C1, 1}, {0x1D6A4, 0x1D6A5, 1}, {0xE0100, 0xE01EF, 1},
	},
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
