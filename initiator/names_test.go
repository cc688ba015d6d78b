package initiator

import (
	"errors"
	"strings"
	"testing"
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
