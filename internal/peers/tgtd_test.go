package peers

import (
	"context"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

const testIQN = "iqn.2026-01.test.peers:disk"

func TestTgtdInquiry(t *testing.T) {
	t.Parallel()
	Require(t, "iscsi-inq")
	tgt := StartTgtd(t)
	if _, err := tgt.AddDiskTarget(1, testIQN, 16<<20); err != nil {
		t.Fatal(err)
	}
	out, err := RunLibiscsi(context.Background(), 30*time.Second, "inq", LibiscsiURL(tgt.Addr, testIQN, 1, "", ""))
	if err != nil {
		t.Fatalf("%v\n--- tgtd log ---\n%s", err, tgt.LogTail(20))
	}
	if !strings.Contains(out, "Vendor:IET") || !strings.Contains(out, "Peripheral Device Type:DIRECT_ACCESS") {
		t.Fatalf("unexpected iscsi-inq output:\n%s", out)
	}
}

// TestTgtdSessions holds a libiscsi session open and checks that tgtd lists
// it as an I_T nexus, and that the nexus goes away after the logout.
func TestTgtdSessions(t *testing.T) {
	t.Parallel()
	Require(t, "iscsi-perf")
	tgt := StartTgtd(t)
	if _, err := tgt.AddDiskTarget(1, testIQN, 16<<20); err != nil {
		t.Fatal(err)
	}
	if n, err := tgt.Sessions(1); err != nil || len(n) != 0 {
		t.Fatalf("before login: %+v, %v", n, err)
	}
	if _, err := tgt.Sessions(2); err == nil {
		t.Fatal("Sessions of a missing target succeeded")
	}
	const initiator = "iqn.2026-01.test.peers:held"
	perf, err := LibiscsiBin("perf")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, perf, "-i", initiator, "-m", "1", "-t", "2", LibiscsiURL(tgt.Addr, testIQN, 1, "", ""))
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()

	var seen []Nexus
	err = pollUntil(ctx, 20*time.Millisecond, func() (bool, error) {
		n, err := tgt.Sessions(1)
		seen = n
		return len(n) > 0, err
	})
	if err != nil {
		t.Fatalf("no session seen: %v (last %+v)", err, seen)
	}
	if len(seen) != 1 || seen[0].Initiator != initiator || len(seen[0].Connections) != 1 ||
		seen[0].Connections[0].IP != Loopback {
		t.Fatalf("sessions: %+v", seen)
	}
	if err := <-waited; err != nil {
		t.Fatalf("iscsi-perf: %v\n%s", err, out.String())
	}
	err = pollUntil(ctx, 20*time.Millisecond, func() (bool, error) {
		n, err := tgt.Sessions(1)
		seen = n
		return len(n) == 0, err
	})
	if err != nil {
		t.Fatalf("session still listed after logout: %v (%+v)", err, seen)
	}
}

func TestTgtdCHAP(t *testing.T) {
	t.Parallel()
	Require(t, "iscsi-inq")
	tgt := StartTgtd(t)
	if _, err := tgt.AddDiskTarget(1, testIQN, 1<<20); err != nil {
		t.Fatal(err)
	}
	for _, step := range []func() error{
		func() error { return tgt.AddAccount("alice", "alicesecret12") },
		func() error { return tgt.BindAccount(1, "alice", false) },
		func() error { return tgt.AddAccount("target", "targetsecret") },
		func() error { return tgt.BindAccount(1, "target", true) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	targets, err := tgt.Targets()
	if err != nil {
		t.Fatal(err)
	}
	if len(targets) != 1 || len(targets[0].Accounts) != 2 || !targets[0].Accounts[1].Outgoing {
		t.Fatalf("targets: %+v", targets)
	}
	ctx := context.Background()
	if out, err := RunLibiscsi(ctx, 30*time.Second, "inq", LibiscsiURL(tgt.Addr, testIQN, 1, "", "")); err == nil {
		t.Fatalf("login without CHAP succeeded:\n%s", out)
	}
	if out, err := RunLibiscsi(ctx, 30*time.Second, "inq", LibiscsiURL(tgt.Addr, testIQN, 1, "alice", "wrongsecret1")); err == nil {
		t.Fatalf("login with a wrong secret succeeded:\n%s", out)
	}
	if _, err := RunLibiscsi(ctx, 30*time.Second, "inq", LibiscsiURL(tgt.Addr, testIQN, 1, "alice", "alicesecret12")); err != nil {
		t.Fatal(err)
	}
}

func TestTgtdParams(t *testing.T) {
	t.Parallel()
	tgt := StartTgtd(t)
	if err := tgt.AddTarget(1, testIQN); err != nil {
		t.Fatal(err)
	}
	if err := tgt.SetParam(1, "MaxRecvDataSegmentLength", "65536"); err != nil {
		t.Fatal(err)
	}
	if err := tgt.SetParam(1, "NoSuchParameter", "1"); err == nil {
		t.Fatal("SetParam accepted an unknown parameter")
	}
	p, err := tgt.Params(1)
	if err != nil {
		t.Fatal(err)
	}
	if p["MaxRecvDataSegmentLength"] != "65536" || p["InitialR2T"] != "Yes" {
		t.Fatalf("params: %v", p)
	}
	if err := tgt.AddTarget(1, testIQN+"2"); err == nil {
		t.Fatal("duplicate tid accepted")
	}
}

// TestTgtdProcessStop checks the non-testing variant: Stop ends tgtd even
// with a target configured, frees the portal and removes its own directory.
func TestTgtdProcessStop(t *testing.T) {
	t.Parallel()
	Require(t, "tgtd", "tgtadm")
	tgt, err := StartTgtdProcess(TgtdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tgt.AddDiskTarget(1, testIQN, 1<<20); err != nil {
		tgt.Stop()
		t.Fatal(err)
	}
	if err := tgt.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := tgt.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if !tgt.Exited() {
		t.Fatal("tgtd still running after Stop")
	}
	if c, err := net.DialTimeout("tcp4", tgt.Addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections", tgt.Addr)
	}
	if _, err := os.Stat(tgt.Dir); !os.IsNotExist(err) {
		t.Fatalf("dir %s not removed: %v", tgt.Dir, err)
	}
}

// TestTgtdPortTaken checks that a fixed, busy portal port is reported as an
// error rather than leaving tgtd running on its wildcard fallback.
func TestTgtdPortTaken(t *testing.T) {
	t.Parallel()
	Require(t, "tgtd", "tgtadm")
	l, err := net.Listen("tcp4", Loopback+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	tgt, err := StartTgtdProcess(TgtdOptions{Port: port, Dir: t.TempDir(), StartTimeout: 10 * time.Second})
	if err == nil {
		tgt.Stop()
		t.Fatal("tgtd started on a busy port")
	}
	if !strings.Contains(err.Error(), "could not bind") {
		t.Fatalf("unexpected error: %v", err)
	}
}
