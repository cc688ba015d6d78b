package peers

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestParseTargetsCaptured(t *testing.T) {
	b, err := os.ReadFile("testdata/tgtadm-show-target.txt")
	if err != nil {
		t.Fatal(err)
	}
	targets, err := ParseTargets(string(b))
	if err != nil {
		t.Fatal(err)
	}
	if len(targets) != 2 {
		t.Fatalf("got %d targets, want 2: %+v", len(targets), targets)
	}
	lo := []NexusConn{{CID: 0, IP: "127.0.0.1"}}
	t1, t2 := targets[0], targets[1]
	if t1.Tid != 1 || t1.IQN != "iqn.2026-01.test:t1" || t1.State != "ready" {
		t.Errorf("target 1 header: %+v", t1)
	}
	wantN1 := []Nexus{
		{ID: 3, Initiator: "iqn.2026-01.test:init-a", Alias: "none", Connections: lo},
		{ID: 4, Initiator: "iqn.2026-01.test:init-b", Alias: "none", Connections: lo},
	}
	if !reflect.DeepEqual(t1.Nexuses, wantN1) {
		t.Errorf("target 1 nexuses:\n got %+v\nwant %+v", t1.Nexuses, wantN1)
	}
	if len(t1.LUNs) != 2 || t1.LUNs[0].Type != "controller" || t1.LUNs[1].Type != "disk" ||
		t1.LUNs[1].BackingStorePath != "/tmp/exp/lun.img" || t1.LUNs[1].Props["Size"] != "67 MB, Block size: 512" {
		t.Errorf("target 1 LUNs: %+v", t1.LUNs)
	}
	if len(t1.Accounts) != 0 || !reflect.DeepEqual(t1.ACLs, []string{"ALL"}) {
		t.Errorf("target 1 accounts %+v ACLs %+v", t1.Accounts, t1.ACLs)
	}
	wantN2 := []Nexus{{ID: 5, Initiator: "iqn.2026-01.test:init-c", Alias: "none", Connections: lo}}
	if t2.Tid != 2 || t2.IQN != "iqn.2026-01.test:t2" || !reflect.DeepEqual(t2.Nexuses, wantN2) {
		t.Errorf("target 2: %+v", t2)
	}
	wantAcc := []Account{{User: "alice"}, {User: "tgtmutual", Outgoing: true}}
	if !reflect.DeepEqual(t2.Accounts, wantAcc) {
		t.Errorf("target 2 accounts: got %+v want %+v", t2.Accounts, wantAcc)
	}
}

// The captured text has one connection per session (libiscsi does not do
// MC/S); this variant, edited by hand, checks several connections, an
// initiator without alias (older tgt) and an IPv6 address.
func TestParseTargetsMultiConnection(t *testing.T) {
	const out = `Target 7: iqn.x:y
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 18446744073709551615
            Initiator: iqn.x:init
            Connection: 0
                IP Address: 127.0.0.1
            Connection: 3
                IP Address: ::1
    LUN information:
    Account information:
    ACL information:
        127.0.0.1
`
	targets, err := ParseTargets(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []Target{{
		Tid: 7, IQN: "iqn.x:y", State: "ready",
		Nexuses: []Nexus{{ID: 1<<64 - 1, Initiator: "iqn.x:init", Connections: []NexusConn{{0, "127.0.0.1"}, {3, "::1"}}}},
		ACLs:    []string{"127.0.0.1"},
	}}
	if !reflect.DeepEqual(targets, want) {
		t.Fatalf("got %+v\nwant %+v", targets, want)
	}
}

func TestParseTargetsEmptyAndErrors(t *testing.T) {
	if targets, err := ParseTargets(""); err != nil || len(targets) != 0 {
		t.Fatalf("empty: %v %v", targets, err)
	}
	for _, bad := range []string{
		"garbage\n",
		"Target x: iqn\n",
		"    I_T nexus information:\n",
		"Target 1: iqn\n    I_T nexus information:\n        I_T nexus: abc\n",
		"Target 1: iqn\n    I_T nexus information:\n        Initiator: iqn alias: none\n",
		"Target 1: iqn\n    I_T nexus information:\n        I_T nexus: 1\n            IP Address: 127.0.0.1\n",
	} {
		if _, err := ParseTargets(bad); err == nil {
			t.Errorf("ParseTargets(%q) succeeded", bad)
		} else if !strings.HasPrefix(err.Error(), "peers: tgtadm show line") {
			t.Errorf("ParseTargets(%q): unexpected error %v", bad, err)
		}
	}
}

func TestParseParams(t *testing.T) {
	p := ParseParams("nop_interval=0\nMaxRecvDataSegmentLength=65536\nHeaderDigest=CRC32C\n\n")
	want := map[string]string{"nop_interval": "0", "MaxRecvDataSegmentLength": "65536", "HeaderDigest": "CRC32C"}
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("got %v want %v", p, want)
	}
}
