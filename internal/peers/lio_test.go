package peers

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const lioTestInitiator = "iqn.2026-01.test.peers:lio"

// lioTool runs one of libiscsi's tools with a deadline and returns its
// combined output.
func lioTool(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// lioURL is libiscsi's URL of LUN lun; user and secret may be empty, and
// query (e.g. "target_user=...&target_password=...") is appended as given.
func lioURL(l *LIO, user, secret string, lun int, query string) string {
	cred := ""
	if user != "" {
		cred = user + "%" + secret + "@" // libiscsi's separator is "%"
	}
	u := "iscsi://" + cred + l.Addr + "/" + l.IQN + "/" + strconv.Itoa(lun)
	if query != "" {
		u += "?" + query
	}
	return u
}

// lioWaitSessions polls LIO's view of the sessions until it equals want.
// A session ends on the target a little after the initiator's logout.
func lioWaitSessions(t *testing.T, l *LIO, want []string) {
	t.Helper()
	var got []string
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if got, err = l.Sessions(); err == nil && slices.Equal(got, want) {
			return
		}
	}
	t.Fatalf("LIO sessions: %q, %v; want %q", got, err, want)
}

func TestLIOParse(t *testing.T) {
	out := "LIO_PORT=40001\nLIO_CTL_PORT=40002\nLIO_QEMU_PID=123\nLIO_IQN=iqn.2003-01.x:t\n" +
		"LIO_CONSOLE=/tmp/d/console.log\nLIO_RUN=/tmp/d\nLIO_KVER=6.1.0-56-amd64\nLIO_READY_S=4.25\n"
	l, err := lioParse([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	want := LIO{Addr: "127.0.0.1:40001", Port: 40001, CtlPort: 40002, Pid: 123, IQN: "iqn.2003-01.x:t",
		Console: "/tmp/d/console.log", RunDir: "/tmp/d", Kernel: "6.1.0-56-amd64", Ready: 4250 * time.Millisecond}
	if *l != want {
		t.Fatalf("got %+v\nwant %+v", *l, want)
	}
	for _, bad := range []string{
		"",
		"LIO_PORT=1\nLIO_CTL_PORT=2\nLIO_IQN=x\n",                           // no pid
		"LIO_PORT=x\nLIO_CTL_PORT=2\nLIO_QEMU_PID=3\nLIO_IQN=x\n",           // port not a number
		"LIO_PORT=1\nLIO_CTL_PORT=2\nLIO_QEMU_PID=3\n",                      // no IQN
		"progress\nLIO_PORT=1\nLIO_CTL_PORT=2\nLIO_QEMU_PID=3\nLIO_IQN=x\n", // not KEY=value
	} {
		if l, err := lioParse([]byte(bad)); err == nil {
			t.Errorf("lioParse(%q) = %+v, want an error", bad, l)
		}
	}
}

func TestLIOEnv(t *testing.T) {
	env, err := lioEnv(LIOOptions{
		LUNs: 2, LUNSizeMB: 8, CHAPUser: "u", CHAPSecret: "s", MaxConnections: 4,
		Params: map[string]string{"InitialR2T": "Yes", "ImmediateData": "No"},
	}, "/tmp/d")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"LIO_RUN=/tmp/d", "LIO_PORT=auto", "LIO_LUNS=2", "LIO_LUN_MB=8", "LIO_CHAP_USER=u",
		"LIO_CHAP_PASS=s", "LIO_MAX_CONNECTIONS=4", "LIO_PARAMS=ImmediateData=No InitialR2T=Yes"} {
		if !slices.Contains(env, want) {
			t.Errorf("env %q lacks %q", env, want)
		}
	}
	for _, bad := range []LIOOptions{
		{CHAPUser: "u"},
		{MutualUser: "m", MutualSecret: "s"},
		{LUNs: -1},
		{Params: map[string]string{"A": "b c"}},
		{Attribs: map[string]string{"../x": "1"}},
	} {
		if _, err := lioEnv(bad, "/tmp/d"); err == nil {
			t.Errorf("lioEnv(%+v) succeeded, want an error", bad)
		}
	}
}

func TestLIOOutputHelpers(t *testing.T) {
	out, err := lioSplitStatus("a\nb"+lioRCMarker+"0\n", "c")
	if out != "a\nb" || err != nil {
		t.Errorf("status 0: %q, %v", out, err)
	}
	if out, err = lioSplitStatus("x\n"+lioRCMarker+"2\n", "c"); out != "x\n" || err == nil {
		t.Errorf("status 2: %q, %v", out, err)
	}
	if _, err = lioSplitStatus("cut short", "c"); err == nil {
		t.Error("no status line: no error")
	}
	// dynamic_sessions ends with a NUL byte after the last name
	if got := lioLines("iqn.a:1\niqn.b:2\n\x00"); !slices.Equal(got, []string{"iqn.a:1", "iqn.b:2"}) {
		t.Errorf("lioLines: %q", got)
	}
}

func TestLIOInquiry(t *testing.T) {
	t.Parallel()
	lioRequire(t, "iscsi-inq", "libiscsi-bin")
	l := StartLIO(t, LIOOptions{LUNSizeMB: 16})

	start := time.Now()
	out, err := lioTool(t, "iscsi-inq", "-i", lioTestInitiator, lioURL(l, "", "", 0, ""))
	if err != nil {
		t.Fatalf("iscsi-inq: %v\n%s", err, out)
	}
	t.Logf("first login + INQUIRY + logout: %v", time.Since(start))
	if !strings.Contains(out, "Vendor:LIO-ORG") || !strings.Contains(out, "Peripheral Device Type:DIRECT_ACCESS") {
		t.Fatalf("unexpected iscsi-inq output:\n%s", out)
	}
	lioWaitSessions(t, l, nil)

	// The control shell: output with stderr, and the exit status.
	if out, err := l.Exec("echo out; echo err >&2"); err != nil || out != "out\nerr\n" {
		t.Errorf("Exec: %q, %v", out, err)
	}
	if _, err := l.Exec("cat /nonexistent"); err == nil {
		t.Error("Exec of a failing command: no error")
	}

	// A live session shows up in LIO's view under the initiator's name.
	if _, err := exec.LookPath("iscsi-perf"); err != nil {
		t.Log("no iscsi-perf: live session not checked")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	perf := exec.CommandContext(ctx, "iscsi-perf", "-i", lioTestInitiator+"-perf", "-m", "1", lioURL(l, "", "", 0, ""))
	if err := perf.Start(); err != nil {
		t.Fatal(err)
	}
	lioWaitSessions(t, l, []string{lioTestInitiator + "-perf"})
	cancel()
	_ = perf.Wait()
	lioWaitSessions(t, l, nil)
}

func TestLIOCHAP(t *testing.T) {
	t.Parallel()
	lioRequire(t, "iscsi-inq", "libiscsi-bin")
	l := StartLIO(t, LIOOptions{LUNSizeMB: 16, CHAPUser: "alice", CHAPSecret: "alicesecret12"})
	if out, err := lioTool(t, "iscsi-inq", "-i", lioTestInitiator, lioURL(l, "alice", "alicesecret12", 0, "")); err != nil {
		t.Fatalf("iscsi-inq with the CHAP secret: %v\n%s", err, out)
	}
	for _, c := range []struct{ user, secret string }{{"alice", "wrongsecret12"}, {"", ""}} {
		if out, err := lioTool(t, "iscsi-inq", "-i", lioTestInitiator, lioURL(l, c.user, c.secret, 0, "")); err == nil {
			t.Errorf("iscsi-inq as %q/%q logged in:\n%s", c.user, c.secret, out)
		}
	}
	lioWaitSessions(t, l, nil)
}

// TestLIOMutualCHAP checks LIO's side of mutual CHAP with libiscsi. The
// target's user name is chosen so that LIO's CHAP_N/CHAP_R response is a
// multiple of 4 bytes long: LIO (6.1) fills the data segment's padding with
// stale bytes, not zeros, and libiscsi 1.19 parses the padding as text and
// fails ("NUL not found after offset 53") when there is any.
func TestLIOMutualCHAP(t *testing.T) {
	t.Parallel()
	lioRequire(t, "iscsi-inq", "libiscsi-bin")
	l := StartLIO(t, LIOOptions{LUNSizeMB: 16, CHAPUser: "alice", CHAPSecret: "alicesecret12",
		MutualUser: "target", MutualSecret: "targetsecret1"})
	url := lioURL(l, "alice", "alicesecret12", 0, "target_user=target&target_password=targetsecret1")
	if out, err := lioTool(t, "iscsi-inq", "-i", lioTestInitiator, url); err != nil {
		t.Fatalf("iscsi-inq with mutual CHAP: %v\n%s", err, out)
	}
	bad := lioURL(l, "alice", "alicesecret12", 0, "target_user=target&target_password=wrongsecret12")
	if out, err := lioTool(t, "iscsi-inq", "-i", lioTestInitiator, bad); err == nil {
		t.Errorf("iscsi-inq accepted the target with a wrong mutual secret:\n%s", out)
	}
}

func TestLIOProcess(t *testing.T) {
	t.Parallel()
	lioRequire(t, lioQemu, lioQemuPackage)
	l, err := StartLIOProcess(LIOOptions{LUNs: 2, LUNSizeMB: 4, MaxConnections: 4,
		Params: map[string]string{"ImmediateData": "No"}, Attribs: map[string]string{"login_timeout": "5"}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	t.Logf("ready in %v", l.Ready)
	tpg := "/sys/kernel/config/target/iscsi/" + l.IQN + "/tpgt_1/"
	for cmd, want := range map[string]string{
		"cat " + tpg + "param/MaxConnections":  "4",
		"cat " + tpg + "param/ImmediateData":   "No",
		"cat " + tpg + "attrib/login_timeout":  "5",
		"cat " + tpg + "attrib/authentication": "0",
		"ls " + tpg + "lun":                    "lun_0\nlun_1",
	} {
		if out, err := l.Exec(cmd); err != nil || strings.TrimSpace(out) != want {
			t.Errorf("%s: %q, %v; want %q", cmd, out, err, want)
		}
	}
	if err := l.Stop(); err != nil {
		t.Fatal(err)
	}
	if !lioGone(l.Pid) {
		t.Errorf("qemu (pid %d) still running after Stop", l.Pid)
	}
	if _, err := os.Stat(l.RunDir); !os.IsNotExist(err) {
		t.Errorf("run directory %s after Stop: %v", l.RunDir, err)
	}
	if err := l.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// TestLIONotReady checks that a VM not ready in time is an error and that
// its qemu is gone.
func TestLIONotReady(t *testing.T) {
	t.Parallel()
	lioRequire(t, lioQemu, lioQemuPackage)
	dir := t.TempDir()
	start := time.Now()
	l, err := lioStart(LIOOptions{Wait: time.Second}, dir) // the guest needs ~3 s at best
	if err == nil {
		l.Stop()
		t.Fatal("ready within 1 s: the test needs a slower boot")
	}
	if !strings.Contains(err.Error(), "guest not ready") {
		t.Errorf("error %v does not say the guest was not ready", err)
	}
	b, rerr := os.ReadFile(filepath.Join(dir, "qemu.pid"))
	if rerr != nil {
		t.Fatalf("no qemu.pid: %v (start error: %v)", rerr, err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	for !lioGone(pid) {
		if time.Since(start) > 30*time.Second {
			t.Fatalf("qemu (pid %d) still running", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
