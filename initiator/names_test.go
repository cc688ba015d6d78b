package initiator

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/session"
)

func TestNormalizeNameRejects(t *testing.T) {
	for _, name := range []string{
		"",
		"iqn",
		"iqn.",
		"iqn.2026-11",
		"iqn.2026-11.",
		"iqn.26-11.org.example",
		"iqn.2026-13.org.example:disk",
		"iqn.2026-00.org.example:disk",
		"iqn.2026/11.org.example:disk",
		"iqn.2026-11.org..example:disk",
		"iqn.2026-11.-org.example:disk",
		"iqn.2026-11.org.example:",
		"iqn.2026-11.org.example:disk one",
		"iqn.2026-11.org.example:disk_one",
		"iqn.2026-11.org.example:disk/1",
		"iqn.2026-11.org.example:" + strings.Repeat("a", 224),
		"eui.02004567A425678",
		"eui.02004567A425678D0",
		"eui.02004567A425678G",
		"naa.52004567BA64678",
		"naa.52004567BA64678D520045674567BA6",
		"naa.52004567BA64678Z",
		"xyz.2026-11.org.example:disk",
		"2026-11.org.example:disk",
		"iqn.2026-11.org.example:disk\x00",
		"iqn.2026-11.org.example:\xff",
	} {
		_, err := NormalizeName(name)
		if !errors.Is(err, ErrInvalidArg) {
			t.Errorf("NormalizeName(%q) = %v, want an error wrapping ErrInvalidArg", name, err)
		}
	}
}

func TestNormalizeNameAccepts(t *testing.T) {
	for name, want := range map[string]string{
		"iqn.2026-11.org.goiscsi:disk1":                          "iqn.2026-11.org.goiscsi:disk1",
		"IQN.2026-11.Org.Goiscsi:Disk1":                          "iqn.2026-11.org.goiscsi:disk1",
		"iqn.2001-04.com.example":                                "iqn.2001-04.com.example",
		"iqn.2001-04.com.example:storage:diskarrays-sn-a8675309": "iqn.2001-04.com.example:storage:diskarrays-sn-a8675309",
		"iqn.2001-04.com.example:storage.tape1.sys1.xyz":         "iqn.2001-04.com.example:storage.tape1.sys1.xyz",
		"eui.02004567A425678D":                                   "eui.02004567a425678d",
		"naa.52004567BA64678D":                                   "naa.52004567ba64678d",
		"naa.62004567BA64678D0123456789ABCDEF":                   "naa.62004567ba64678d0123456789abcdef",
		"iqn.2026-11.org.example:" + strings.Repeat("a", 199):    "iqn.2026-11.org.example:" + strings.Repeat("a", 199),
	} {
		got, err := NormalizeName(name)
		if err != nil || got != want {
			t.Errorf("NormalizeName(%q) = %q, %v; want %q", name, got, err, want)
		}
	}
}

// TestNormalizeNameStringprep checks the iSCSI stringprep profile (RFC 3722,
// on RFC 3454) step by step: each case names the rule it exercises.
func TestNormalizeNameStringprep(t *testing.T) {
	const base = "iqn.2026-01.org.example:"
	for _, c := range []struct {
		rule, in, want string
	}{
		{"§4 B.2: case folding of the type prefix", "IQN.2026-01.Org.Example:Disk1", "iqn.2026-01.org.example:disk1"},
		{"§4 B.2 and §5 NFKC: the ligature fi", base + "\ufb01le", base + "file"},
		{"§5 NFKC: fullwidth letters", "iqn.2026-01.org.\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45:disk", "iqn.2026-01.org.example:disk"},
		{"§5 NFKC: fullwidth capitals and full stop, then B.2", "\uff29\uff31\uff2e\uff0e2026-01.org.example:disk", "iqn.2026-01.org.example:disk"},
		{"§4 B.1: soft hyphen maps to nothing", base + "di\u00adsk", base + "disk"},
		{"§4 B.1: zero width space maps to nothing", base + "di\u200bsk", base + "disk"},
		{"§4 B.1: variation selector maps to nothing", base + "disk\ufe0f", base + "disk"},
		{"§4 B.2: full case folding of sharp s", base + "stra\u00dfe", base + "strasse"},
		{"§4 B.2: folding closed under NFKC (double-struck C)", base + "\u2102" + "1", base + "c1"},
		{"§4 B.2: capital I with dot above", base + "\u0130", base + "i\u0307"},
		{"§5 NFKC: composition of e and combining acute", base + "caf" + "e\u0301", base + "caf\u00e9"},
		{"§6: a symbol no table prohibits", base + "disk\u2603", base + "disk\u2603"},
	} {
		got, err := NormalizeName(c.in)
		if err != nil || got != c.want {
			t.Errorf("%s: NormalizeName(%+q) = %+q, %v; want %+q", c.rule, c.in, got, err, c.want)
		}
		// The normal form is a fixed point: preparing it again changes nothing.
		if again, err := NormalizeName(got); err == nil && again != got {
			t.Errorf("%s: NormalizeName(%+q) = %+q, not a fixed point", c.rule, got, again)
		}
	}
}

// TestNormalizeNameStringprepRefuses checks that what RFC 3722 prohibits is
// refused with ErrInvalidArg, and that the error names the rule.
func TestNormalizeNameStringprepRefuses(t *testing.T) {
	const base = "iqn.2026-01.org.example:"
	for _, c := range []struct {
		rule, in, why string
	}{
		{"C.2.1 ASCII control", base + "disk\x00", "RFC 3722 §6.1"},
		{"C.1.2 no-break space, which NFKC makes an ASCII space", base + "disk\u00a0one", "RFC 3722 §6.1"},
		{"C.1.2 ideographic space, which NFKC makes an ASCII space", base + "disk\u3000one", "RFC 3722 §6.1"},
		{"C.1.2 ogham space mark", base + "disk\u1680one", "C.1.2"},
		{"C.2.2 non-ASCII control", base + "disk\u0085", "C.2.2"},
		{"C.3 private use", base + "disk\ue000", "C.3"},
		{"C.3 private use, plane 15", base + "disk\U000f0000", "C.3"},
		{"C.4 non-character", base + "disk\ufdd0", "C.4"},
		{"C.4 non-character at a plane's end", base + "disk\U0001fffe", "C.4"},
		{"C.6 replacement character", base + "disk\ufffd", "C.6"},
		{"C.7 ideographic description character", base + "disk\u2ff0", "C.7"},
		{"C.8 left-to-right mark", base + "disk\u200e", "C.8"},
		{"C.9 tag character", base + "disk\U000e0041", "C.9"},
		{"§6.1 ideographic full stop", "iqn.2026-01.org\u3002example:disk", "ideographic full stop"},
		{"§6.1 fullwidth low line, which NFKC makes '_'", base + "disk\uff3fone", "RFC 3722 §6.1"},
		{"§8 A.1: added in Unicode 4.0", base + "disk\u0221", "unassigned in Unicode 3.2"},
		{"§8 A.1: added in Unicode 5.0", base + "disk\u0242", "unassigned in Unicode 3.2"},
		{"§8 A.1: never assigned", base + "disk\u0378", "unassigned in Unicode 3.2"},
		{"§7 bidi: right-to-left letter among left-to-right ones", base + "disk\u05d0", "right-to-left"},
		{"input too long to prepare", base + strings.Repeat("\uff41", 300), "too long to prepare"},
		{"prepared form longer than 223 bytes", base + strings.Repeat("\uff41", 200), "longer than 223 bytes"},
	} {
		got, err := NormalizeName(c.in)
		if !errors.Is(err, ErrInvalidArg) || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%s: NormalizeName(%+q) = %+q, %v; want an error wrapping ErrInvalidArg that says %q", c.rule, c.in, got, err, c.why)
		}
	}
}

// TestLoginSendsNormalForm logs in with names spelt in fullwidth and upper
// case: the target must see their normal forms, and the session must be
// found (and logged out) by any spelling of the target's name.
func TestLoginSendsNormalForm(t *testing.T) {
	tg := iscsitest.NewTarget(iscsitest.Config{Name: memTarget, LUNs: []int64{1 << 20}})
	t.Cleanup(tg.Close)
	// "iqn.2026-11.org.goiscsi:initiator" with a fullwidth, upper-case type.
	in, err := New(Config{Name: "\uff29\uff31\uff2e.2026-11.org.goiscsi:Initiator", NOPInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	if in.Name() != "iqn.2026-11.org.goiscsi:initiator" {
		t.Fatalf("Name() = %q, want the normal form", in.Name())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// memTarget in upper case, with a fullwidth "mem".
	if _, err := in.Login(ctx, tg.Addr(), "IQN.2026-11.ORG.GOISCSI:\uff4d\uff45\uff4d", LoginOptions{Connections: 1}); err != nil {
		t.Fatalf("login with a fullwidth target name: %v", err)
	}
	ss := tg.Sessions()
	if len(ss) != 1 || ss[0].InitiatorName != "iqn.2026-11.org.goiscsi:initiator" || ss[0].TargetName != memTarget {
		t.Fatalf("target saw %+v, want one session with the names' normal forms", ss)
	}
	if n := len(in.Sessions(memTarget)); n != 1 {
		t.Fatalf("Sessions(%q) has %d sessions, want 1", memTarget, n)
	}
	op, err := in.LogoutFromTargetWith("iqn.2026-11.org.goiscsi:M\uff25m", logout.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := op.Wait(ctx)
	if err != nil || r.Outcome != logout.Success || len(r.Sessions) != 1 {
		t.Fatalf("logout by another spelling: outcome %v, %d sessions, %v", r.Outcome, len(r.Sessions), err)
	}
	if n := liveAtTarget(tg); n != 0 {
		t.Fatalf("target still has %d live sessions", n)
	}
}

// TestLoginRefusesUnimplementedParams: an ErrorRecoveryLevel outside the
// RFC's 0-2 (the session package implements all three) is an invalid
// argument (E_INVALIDARG), refused before anything is dialed (the portal
// here has no listener).
func TestLoginRefusesUnimplementedParams(t *testing.T) {
	in, err := New(Config{Name: "iqn.2026-11.org.goiscsi:initiator", NOPInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	p := session.DefaultParams()
	p.ErrorRecoveryLevel = 3
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = in.Login(ctx, "127.0.0.1:1", memTarget, LoginOptions{Connections: 1, Params: &p})
	if !errors.Is(err, ErrInvalidArg) || !errors.Is(err, session.ErrInvalidConfig) ||
		!strings.Contains(err.Error(), "ErrorRecoveryLevel 3 is outside 0-2") {
		t.Fatalf("Login with ErrorRecoveryLevel 3: %v; want ErrInvalidArg and session.ErrInvalidConfig", err)
	}
	// Discovery offers the Config's parameters.
	in2, err := New(Config{Name: "iqn.2026-11.org.goiscsi:initiator", NOPInterval: -1, Params: &p})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in2.Close() })
	if _, err := in2.Discover(ctx, "127.0.0.1:1", nil); !errors.Is(err, ErrInvalidArg) || !errors.Is(err, session.ErrInvalidConfig) {
		t.Fatalf("Discover with ErrorRecoveryLevel 3: %v; want ErrInvalidArg and session.ErrInvalidConfig", err)
	}
}
