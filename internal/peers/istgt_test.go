package peers

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestIstgtInquiry(t *testing.T) {
	t.Parallel()
	Require(t, "iscsi-inq", "iscsi-readcapacity16")
	s := StartIstgt(t, IstgtOptions{DiskSize: 8 << 20})
	if s.IQN != "iqn.2026-11.istgt:disk1" {
		t.Fatalf("IQN %q", s.IQN)
	}
	ctx := context.Background()
	out, err := RunLibiscsi(ctx, 30*time.Second, "inq", LibiscsiURL(s.Addr, s.IQN, 0, "", ""))
	if err != nil {
		t.Fatalf("%v\n--- istgt log ---\n%s", err, s.LogTail(20))
	}
	if !strings.Contains(out, "Peripheral Device Type:DIRECT_ACCESS") {
		t.Fatalf("unexpected iscsi-inq output:\n%s", out)
	}
	out, err = RunLibiscsi(ctx, 30*time.Second, "readcapacity16", LibiscsiURL(s.Addr, s.IQN, 0, "", ""))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "Total size:8388608") {
		t.Fatalf("unexpected iscsi-readcapacity16 output:\n%s", out)
	}
}

func TestIstgtCHAP(t *testing.T) {
	t.Parallel()
	Require(t, "iscsi-inq")
	s := StartIstgt(t, IstgtOptions{
		NodeBase: "iqn.2026-01.test.peers", TargetName: "chapdisk",
		CHAPUser: "alice", CHAPSecret: "alicesecret12",
	})
	if s.IQN != "iqn.2026-01.test.peers:chapdisk" {
		t.Fatalf("IQN %q", s.IQN)
	}
	ctx := context.Background()
	if out, err := RunLibiscsi(ctx, 30*time.Second, "inq", LibiscsiURL(s.Addr, s.IQN, 0, "", "")); err == nil {
		t.Fatalf("login without CHAP succeeded:\n%s", out)
	}
	if out, err := RunLibiscsi(ctx, 30*time.Second, "inq", LibiscsiURL(s.Addr, s.IQN, 0, "alice", "wrongsecret1")); err == nil {
		t.Fatalf("login with a wrong secret succeeded:\n%s", out)
	}
	if _, err := RunLibiscsi(ctx, 30*time.Second, "inq", LibiscsiURL(s.Addr, s.IQN, 0, "alice", "alicesecret12")); err != nil {
		t.Fatalf("%v\n--- istgt log ---\n%s", err, s.LogTail(20))
	}
}

func TestIstgtProcessStop(t *testing.T) {
	t.Parallel()
	Require(t, "istgt")
	s, err := StartIstgtProcess(IstgtOptions{DiskSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("istgt stopped in %v", time.Since(start))
	if !s.Exited() {
		t.Fatal("istgt still running after Stop")
	}
}

func TestIstgtConfig(t *testing.T) {
	conf, auth := IstgtConfig(IstgtOptions{
		CHAPUser: "u", CHAPSecret: "s", MutualUser: "mu", MutualSecret: "ms",
		Global: map[string]string{"MaxBurstLength": "262144", "QueueDepth": "8"},
	}, "/d", 1000, 1001)
	for _, want := range []string{
		"[Global]\n  NodeBase \"iqn.2026-11.istgt\"\n  PidFile /d/istgt.pid\n  AuthFile /d/auth.conf\n",
		"  MaxBurstLength 262144\n", "  QueueDepth 8\n", "  MaxConnections 4\n",
		"Portal UC1 127.0.0.1:1001\n", "Portal DA1 127.0.0.1:1000\n",
		"  AuthMethod CHAP Mutual\n  AuthGroup AuthGroup1\n",
		"  LUN0 Storage /d/disk.img Auto\n",
	} {
		if !strings.Contains(conf, want) {
			t.Errorf("istgt.conf lacks %q:\n%s", want, conf)
		}
	}
	if !strings.Contains(auth, "[AuthGroup1]\n  Auth \"u\" \"s\" \"mu\" \"ms\"\n") {
		t.Errorf("auth.conf:\n%s", auth)
	}
	conf, _ = IstgtConfig(IstgtOptions{}, "/d", 1, 2)
	if !strings.Contains(conf, "[LogicalUnit1]\n  TargetName disk1\n  Mapping PortalGroup1 InitiatorGroup1\n  AuthMethod None\n") {
		t.Errorf("default logical unit section:\n%s", conf)
	}
}
