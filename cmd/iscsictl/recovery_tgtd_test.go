package main

import (
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/peers"
)

// restartTgtdCLI kills tgtd (SIGKILL) and starts another on the same
// portal, control port and directory, serving the same backing file as
// target 1, LUN 1 named tgtdTarget.
func restartTgtdCLI(t *testing.T, old *peers.Tgtd, path string) *peers.Tgtd {
	t.Helper()
	if err := syscall.Kill(old.Pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill tgtd %d: %v", old.Pid, err)
	}
	old.Stop() // reaps it; its error is the kill's
	s, err := peers.StartTgtdProcess(peers.TgtdOptions{Port: old.Port, CtlPort: old.CtlPort, Dir: old.Dir})
	if err != nil {
		t.Fatalf("restart tgtd on %s: %v\n%s", old.Addr, err, old.LogTail(20))
	}
	for _, err := range []error{s.AddTarget(1, tgtdTarget), s.AddLUN(1, 1, path), s.BindAll(1)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// waitTgtdSession waits until tgtd has a session on target 1 (tgtadm is
// the only way to see it: a bounded poll).
func waitTgtdSession(t *testing.T, s *peers.Tgtd) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ns, err := s.Sessions(1)
		if err == nil && len(ns) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("tgtd never had a session (%v)", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// perf at queue depth 8 (Submit) and 1 (Execute), reading and writing,
// rides through a tgtd SIGKILL and restart mid-run: no I/O fails, and its
// JSON counts the reconnect and the retried commands.
func TestTgtdPerfRidesThroughRestart(t *testing.T) {
	peers.Require(t, "tgtd", "tgtadm")
	for _, args := range [][]string{
		{"--rw", "write", "--qd", "8"},
		{"--rw", "read", "--qd", "1"},
	} {
		s, err := peers.StartTgtdProcess(peers.TgtdOptions{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		img, err := s.AddDiskTarget(1, tgtdTarget, 64<<20)
		if err != nil {
			s.Stop()
			t.Fatal(err)
		}
		done := make(chan result, 1)
		// iscsictlWith fails the test from this goroutine only on its
		// own timeout (the process killed); the wait below is bounded too.
		go func() {
			done <- iscsictlWith(t, runOpts{timeout: 90 * time.Second}, append([]string{"perf", "--portal", s.Addr, "--lun", "1",
				"--duration", "4s", "--replacement-timeout", "60s", "--json"}, args...)...)
		}()
		waitTgtdSession(t, s)
		s = restartTgtdCLI(t, s, img)
		var r result
		select {
		case r = <-done:
		case <-time.After(2 * time.Minute):
			s.Stop()
			t.Fatal("perf did not end")
		}
		s.Stop()
		v := r.want(t, exitOK).json(t)
		if path(t, v, "errors") != 0.0 || path(t, v, "ios").(float64) <= 0 {
			t.Errorf("perf %v across a restart: %v", args, v)
		}
		if rc := path(t, v, "recovery", "reconnects"); rc != 1.0 {
			t.Errorf("perf %v: recovery.reconnects %v, want 1 (%v)", args, rc, path(t, v, "recovery"))
		}
		t.Logf("perf %v: %v I/Os, recovery %v", args, path(t, v, "ios"), path(t, v, "recovery"))
	}
}

// read and write print their recovery counts in JSON (none without a
// loss).
func TestTgtdReadWriteRecoveryJSON(t *testing.T) {
	s := startTgtd(t)
	for _, args := range [][]string{
		{"write", "--blocks", "16", "--random", "--verify"},
		{"read", "--blocks", "16", "--out", filepath.Join(t.TempDir(), "out.bin")},
	} {
		v := iscsictl(t, append(args, "--portal", s.Addr, "--lun", "1", "--json")...).want(t, exitOK).json(t)
		if path(t, v, "recovery", "reconnects") != 0.0 || path(t, v, "recovery", "retriedCommands") != 0.0 {
			t.Errorf("%s: recovery %v", args[0], path(t, v, "recovery"))
		}
	}
}
