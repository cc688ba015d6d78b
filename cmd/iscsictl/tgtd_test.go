package main

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/peers"
)

const tgtdTarget = "iqn.2026-01.org.goiscsi.test:ctl-disk"

// startTgtd starts a tgtd with one 64 MiB disk target (LUN 1).
func startTgtd(t *testing.T) *peers.Tgtd {
	t.Helper()
	s := peers.StartTgtd(t)
	if _, err := s.AddDiskTarget(1, tgtdTarget, 64<<20); err != nil {
		t.Fatal(err)
	}
	return s
}

// waitNoSessions waits until tgtd reports no session on target tid.
func waitNoSessions(t *testing.T, s *peers.Tgtd, tid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ns, err := s.Sessions(tid)
		if err != nil {
			t.Fatal(err)
		}
		if len(ns) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("tgtd still has %d sessions after the logout: %+v", len(ns), ns)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestTgtd is a user's session with tgtd: discover, look at the LUNs,
// write and read back, log in, log out (with the target's own view and a
// capture checked by tshark), log out of nothing.
func TestTgtd(t *testing.T) {
	s := startTgtd(t)
	portal := s.Addr
	dir := t.TempDir()

	v := iscsictl(t, "discover", "--portal", portal, "--json").want(t, exitOK).json(t)
	if got := path(t, v, "targets", 0, "name"); got != tgtdTarget {
		t.Errorf("discover: %v", v)
	}
	r := iscsictl(t, "discover", "--portal", portal).want(t, exitOK)
	if !strings.Contains(r.stdout, tgtdTarget) {
		t.Errorf("discover:\n%s", r.stdout)
	}

	// --target may be left out: the portal has one target.
	v = iscsictl(t, "inquiry", "--portal", portal, "--json").want(t, exitOK).json(t)
	if path(t, v, "luns", 1, "type") != "disk" || path(t, v, "luns", 1, "lun") != 1.0 {
		t.Errorf("inquiry: %v", v)
	}
	v = iscsictl(t, "readcap", "--portal", portal, "--target", tgtdTarget, "--lun", "1", "--json").want(t, exitOK).json(t)
	if path(t, v, "luns", 0, "bytes") != float64(64<<20) || path(t, v, "luns", 0, "blockSize") != 512.0 {
		t.Errorf("readcap: %v", v)
	}

	// Write a file, read it back with another process, compare.
	in := filepath.Join(dir, "in.bin")
	data := make([]byte, 300<<10)
	rand.Read(data)
	if err := os.WriteFile(in, data, 0o600); err != nil {
		t.Fatal(err)
	}
	v = iscsictl(t, "write", "--portal", portal, "--lba", "64", "--in", in, "--verify", "--json").want(t, exitOK).json(t)
	if path(t, v, "verified") != true || path(t, v, "blocks") != float64(len(data)/512) {
		t.Errorf("write: %v", v)
	}
	out := filepath.Join(dir, "out.bin")
	iscsictl(t, "read", "--portal", portal, "--lba", "64", "--blocks", strconv.Itoa(len(data)/512), "--out", out).want(t, exitOK)
	if got, _ := os.ReadFile(out); !bytes.Equal(got, data) {
		t.Error("the data read back differs from the data written")
	}
	r = iscsictl(t, "read", "--portal", portal, "--lba", strconv.Itoa(64<<20/512), "--blocks", "1").want(t, exitInvalidArg)
	if !strings.Contains(r.stderr, "past the end of LUN 1") {
		t.Errorf("read past the end: %q", r.stderr)
	}

	// login prints the sessions and the negotiated parameters, then logs
	// out.
	v = iscsictl(t, "login", "--portal", portal, "--target", tgtdTarget, "--sessions", "2", "--json").want(t, exitOK).json(t)
	if n := len(path(t, v, "sessions").([]any)); n != 2 {
		t.Errorf("login: %d sessions", n)
	}
	if path(t, v, "sessions", 0, "params", "MaxRecvDataSegmentLength") == nil || path(t, v, "logout", "outcome") != "success" {
		t.Errorf("login: %v", v)
	}
	waitNoSessions(t, s, 1)

	// logout: three sessions, every one logged out, none left on tgtd.
	pcap := filepath.Join(dir, "logout.pcap")
	v = iscsictl(t, "logout", "--portal", portal, "--target", tgtdTarget, "--sessions", "3", "--pcap", pcap, "--json").want(t, exitOK).json(t)
	if path(t, v, "logout", "outcome") != "success" || path(t, v, "logout", "hresult") != "0x00000000" || path(t, v, "logout", "loggedOut") != 3.0 {
		t.Errorf("logout: %v", v)
	}
	waitNoSessions(t, s, 1)
	checkCapture(t, pcap, s.Port, 3)

	// A second logout finds nothing: a new process has no session, which
	// --sessions 0 states.
	v = iscsictl(t, "logout", "--target", tgtdTarget, "--sessions", "0", "--json").want(t, exitNotFound).json(t)
	if path(t, v, "logout", "outcome") != "session not found" {
		t.Errorf("second logout: %v", v)
	}

	// Logging out with reads running: they drain, the logout succeeds.
	v = iscsictl(t, "logout", "--portal", portal, "--target", tgtdTarget, "--sessions", "2", "--io", "--drain", "2s", "--json").want(t, exitOK).json(t)
	if path(t, v, "io", "failed") != 0.0 {
		t.Errorf("logout with I/O: %v", path(t, v, "io"))
	}
	waitNoSessions(t, s, 1)

	// Errors a user can act on.
	r = iscsictl(t, "login", "--portal", portal, "--target", "iqn.2026-01.org.goiscsi.test:absent").want(t, exitError)
	if want := "target iqn.2026-01.org.goiscsi.test:absent not found on portal " + portal + " (0x0203)"; !strings.Contains(r.stderr, want) {
		t.Errorf("stderr %q, want %q", r.stderr, want)
	}
	iscsictl(t, "login", "--portal", portal, "--target", "not-a-name").want(t, exitInvalidArg)
}

// checkCapture checks a capture of a logout of n single-connection
// sessions: tshark finds nothing malformed and every connection carries a
// Logout Request and its Response; decode prints them.
func checkCapture(t *testing.T, file string, port, n int) {
	t.Helper()
	r := iscsictl(t, "decode", file, "--port", strconv.Itoa(port)).want(t, exitOK)
	if c := strings.Count(r.stdout, "Logout Response"); c != n {
		t.Errorf("decode shows %d Logout Responses, want %d:\n%s", c, n, r.stdout)
	}
	checkTsharkLogouts(t, file, port, n)
}

// checkTsharkLogouts checks with tshark that the capture has no malformed
// packet and n TCP streams each carrying one Logout Request and one
// Logout Response.
func checkTsharkLogouts(t *testing.T, file string, port, n int) {
	t.Helper()
	peers.Require(t, "tshark")
	bad, err := peers.TsharkMalformed(file, port)
	if err != nil {
		t.Fatal(err)
	}
	if bad != 0 {
		t.Errorf("tshark finds %d malformed packets in %s", bad, file)
	}
	rows, err := peers.TsharkFields(file, port, "tcp.stream", "iscsi.opcode")
	if err != nil {
		t.Fatal(err)
	}
	req, resp := map[string]int{}, map[string]int{}
	for _, row := range rows {
		for _, op := range strings.Split(row[1], ",") {
			switch op {
			case "0x06":
				req[row[0]]++
			case "0x26":
				resp[row[0]]++
			}
		}
	}
	if len(req) != n || len(resp) != n {
		t.Errorf("tshark: Logout Requests %v and Responses %v by TCP stream, want one each on %d streams", req, resp, n)
	}
	for stream, k := range req {
		if k != 1 || resp[stream] != 1 {
			t.Errorf("tcp.stream %s: %d Logout Requests, %d Responses", stream, k, resp[stream])
		}
	}
}

// TestTgtdCHAP logs in with one-way and mutual CHAP, secrets from a file and
// from the environment, and checks that no secret ever shows.
func TestTgtdCHAP(t *testing.T) {
	s := startTgtd(t)
	const (
		user, secret       = "ctluser", "initiator-secret-0123"
		tuser, tsecret     = "tgtuser", "target-secret-456789"
		wrong              = "not-the-secret-0000"
		wrongTargetSecret  = "not-the-target-secret"
		chapFailureMessage = "authentication failed (0x0201)"
	)
	for _, step := range []func() error{
		func() error { return s.AddAccount(user, secret) },
		func() error { return s.BindAccount(1, user, false) },
		func() error { return s.AddAccount(tuser, tsecret) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	os.WriteFile(secretFile, []byte(secret+"\n"), 0o600)
	// tgtd answers CHAP_A=8,7,6,5 with 7, then fails to read a SHA-256
	// response: MD5 is what it handles.
	base := []string{"login", "--portal", s.Addr, "--target", tgtdTarget, "--chap-user", user, "--chap-algorithms", "md5", "--log-level", "debug"}
	noSecret := func(r result) {
		t.Helper()
		for _, x := range []string{secret, tsecret, wrong, wrongTargetSecret} {
			if strings.Contains(r.stdout+r.stderr, x) {
				t.Errorf("a CHAP secret shows in the output:\n%s\n%s", r.stdout, r.stderr)
			}
		}
	}

	noSecret(iscsictlWith(t, runOpts{env: []string{envCHAPSecret + "=" + secret}}, base...).want(t, exitOK))
	noSecret(iscsictl(t, append(base, "--chap-secret-file", secretFile, "--json")...).want(t, exitOK))

	r := iscsictlWith(t, runOpts{env: []string{envCHAPSecret + "=" + wrong}}, base...).want(t, exitError)
	noSecret(r)
	if !strings.Contains(r.stderr, chapFailureMessage) {
		t.Errorf("wrong secret: stderr %q", r.stderr)
	}
	r = iscsictl(t, "login", "--portal", s.Addr, "--target", tgtdTarget).want(t, exitError)
	if !strings.Contains(r.stderr, "authentication failed") {
		t.Errorf("no CHAP: stderr %q", r.stderr)
	}
	r = iscsictlWith(t, runOpts{env: []string{envCHAPSecret + "=" + secret}}, "login", "--portal", s.Addr, "--target", tgtdTarget, "--chap-user", user)
	if r.code != exitOK && !strings.Contains(r.stderr, "try --chap-algorithms md5") {
		t.Errorf("tgtd with every CHAP algorithm offered: exit %d, %q", r.code, r.stderr)
	}
	// A user without a secret is a mistake on the command line.
	iscsictl(t, "login", "--portal", s.Addr, "--target", tgtdTarget, "--chap-user", user).want(t, exitInvalidArg)

	// Mutual CHAP.
	if err := s.BindAccount(1, tuser, true); err != nil {
		t.Fatal(err)
	}
	mutual := append(base, "--chap-target-user", tuser)
	noSecret(iscsictlWith(t, runOpts{env: []string{envCHAPSecret + "=" + secret, envCHAPTargetSecret + "=" + tsecret}}, mutual...).want(t, exitOK))
	r = iscsictlWith(t, runOpts{env: []string{envCHAPSecret + "=" + secret, envCHAPTargetSecret + "=" + wrongTargetSecret}}, mutual...).want(t, exitError)
	noSecret(r)
	if !strings.Contains(r.stderr, "authentication failed: CHAP_R") {
		t.Errorf("wrong target secret: stderr %q", r.stderr)
	}
}

// TestTgtdPerf runs short reads and writes and checks the report.
func TestTgtdPerf(t *testing.T) {
	s := startTgtd(t)
	for _, args := range [][]string{
		{"--rw", "read", "--pattern", "random", "--bs", "4096", "--qd", "8"},
		{"--rw", "write", "--pattern", "sequential", "--bs", "65536", "--qd", "4"},
	} {
		v := iscsictl(t, append([]string{"perf", "--portal", s.Addr, "--duration", "1s", "--json"}, args...)...).want(t, exitOK).json(t)
		ios := path(t, v, "ios").(float64)
		if ios < 10 || path(t, v, "errors") != 0.0 || path(t, v, "iops").(float64) <= 0 {
			t.Errorf("perf %v: %v", args, v)
		}
		p50, p99, p999 := path(t, v, "latencyUs", "p50").(float64), path(t, v, "latencyUs", "p99").(float64), path(t, v, "latencyUs", "p999").(float64)
		if p50 <= 0 || p50 > p99 || p99 > p999 {
			t.Errorf("perf %v: latency percentiles %v %v %v", args, p50, p99, p999)
		}
		if path(t, v, "cpuMeasured") != true || path(t, v, "cpuUsPerIO").(float64) <= 0 {
			t.Errorf("perf %v: CPU per I/O not measured: %v", args, v)
		}
	}
	r := iscsictl(t, "perf", "--portal", s.Addr, "--duration", "300ms").want(t, exitOK)
	for _, want := range []string{"IOPS", "MB/s", "p50", "p99", "p99.9", "µs per I/O"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("perf output lacks %q:\n%s", want, r.stdout)
		}
	}
}
