package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/iscsitest"
)

// started is a run of the binary that the test signals.
type started struct {
	cmd  *exec.Cmd
	out  *bufio.Scanner
	text strings.Builder
	errb bytes.Buffer
}

// startBin starts the binary with args; stdout is read line by line.
func startBin(t *testing.T, ctx context.Context, args ...string) *started {
	t.Helper()
	s := &started{cmd: exec.CommandContext(ctx, bin, args...)}
	s.cmd.WaitDelay = 5 * time.Second
	s.cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	s.cmd.Stderr = &s.errb
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.out = bufio.NewScanner(out)
	return s
}

// waitLine reads stdout until a line has prefix; false if it ended first.
func (s *started) waitLine(prefix string) bool {
	for s.out.Scan() {
		s.text.WriteString(s.out.Text() + "\n")
		if strings.HasPrefix(strings.TrimSpace(s.out.Text()), prefix) {
			return true
		}
	}
	return false
}

// finish reads the rest of stdout and returns the exit status.
func (s *started) finish(t *testing.T) int {
	t.Helper()
	for s.out.Scan() {
		s.text.WriteString(s.out.Text() + "\n")
	}
	err := s.cmd.Wait()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	t.Fatalf("%v\nstdout:\n%s\nstderr:\n%s", err, s.text.String(), s.errb.String())
	return -1
}

// loggedOut counts the Logout Requests the target answered with success.
func loggedOut(tg *iscsitest.Target) int {
	n := 0
	for _, c := range tg.Stats().Logouts {
		n += c
	}
	return n
}

// TestPerfInterrupt: Ctrl-C during perf prints what was measured until
// then (a line per second before it), logs out, and exits 130.
func TestPerfInterrupt(t *testing.T) {
	t.Parallel()
	tg := cliTestTarget(t, iscsitest.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	s := startBin(t, ctx, "perf", "iscsi://"+tg.Addr()+"/"+cliTarget+"/0", "--duration", "30s", "--qd", "2")
	if !s.waitLine("1 s:") {
		t.Fatalf("no line per second:\n%s\n%s", s.text.String(), s.errb.String())
	}
	start := time.Now()
	s.cmd.Process.Signal(os.Interrupt)
	if code := s.finish(t); code != exitInterrupted {
		t.Fatalf("exit %d, want %d\n%s\n%s", code, exitInterrupted, s.text.String(), s.errb.String())
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("%s to end after Ctrl-C", d)
	}
	out := s.text.String()
	if !strings.Contains(out, "interrupted after") || !strings.Contains(out, " IOPS, ") || !strings.Contains(out, "p99.9") {
		t.Errorf("stdout:\n%s", out)
	}
	if loggedOut(tg) == 0 {
		t.Errorf("perf did not log out after Ctrl-C: %+v", tg.Stats())
	}

	// --json: the same, as the document; the histogram counts every I/O.
	s = startBin(t, ctx, "perf", "iscsi://"+tg.Addr()+"/"+cliTarget+"/0", "--duration", "30s", "--qd", "2", "--json", "--log-level", "info")
	time.Sleep(1500 * time.Millisecond) // --json prints nothing before the end: let a second pass
	s.cmd.Process.Signal(os.Interrupt)
	if code := s.finish(t); code != exitInterrupted {
		t.Fatalf("--json: exit %d\n%s\n%s", code, s.text.String(), s.errb.String())
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(s.text.String()), &v); err != nil {
		t.Fatalf("%v\n%s", err, s.text.String())
	}
	checkJSONDoc(t, "perf --json interrupted", v)
	ios := path(t, v, "ios").(float64)
	if path(t, v, "interrupted") != true || ios == 0 || path(t, v, "latencyUs", "count") != ios ||
		path(t, v, "commands") != ios+path(t, v, "errors").(float64) || len(path(t, v, "intervals").([]any)) < 1 {
		t.Errorf("perf --json: %v", v)
	}
}

// TestLoginHoldInterrupt: Ctrl-C during `login --hold` logs out cleanly
// (the Logout Response is read: success, exit 0), where the interrupt used
// to cancel the logout it asked for (outcome failed, exit 3).
func TestLoginHoldInterrupt(t *testing.T) {
	t.Parallel()
	tg := cliTestTarget(t, iscsitest.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	s := startBin(t, ctx, "login", "iscsi://"+tg.Addr()+"/"+cliTarget, "--sessions", "2", "--conns", "2", "--hold", "30s")
	if !s.waitLine("Holding the sessions") {
		t.Fatalf("no hold:\n%s\n%s", s.text.String(), s.errb.String())
	}
	s.cmd.Process.Signal(os.Interrupt)
	if code := s.finish(t); code != exitOK {
		t.Fatalf("exit %d, want 0\n%s\n%s", code, s.text.String(), s.errb.String())
	}
	if out := s.text.String(); !strings.Contains(out, "Interrupted: logging out") || !strings.Contains(out, "Outcome: success") {
		t.Errorf("stdout:\n%s", out)
	}
	if n := loggedOut(tg); n != 4 {
		t.Errorf("%d connections logged out, want 4", n)
	}
}

// TestLoginHoldSecondInterrupt: a second Ctrl-C cuts the logout short: a
// target that never answers the Logout Request does not hold the command
// for its 25 s timeout; the logout is canceled (exit 6).
func TestLoginHoldSecondInterrupt(t *testing.T) {
	t.Parallel()
	tg := cliTestTarget(t, iscsitest.Config{Hook: iscsitest.NoLogoutResponse(iscsitest.AnySession())})
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	s := startBin(t, ctx, "login", "iscsi://"+tg.Addr()+"/"+cliTarget, "--hold", "30s", "--timeout", "25s")
	if !s.waitLine("Holding the sessions") {
		t.Fatalf("no hold:\n%s\n%s", s.text.String(), s.errb.String())
	}
	s.cmd.Process.Signal(os.Interrupt)
	if !s.waitLine("Interrupted: logging out") {
		t.Fatalf("no logout:\n%s\n%s", s.text.String(), s.errb.String())
	}
	// The Logout Request goes out at once; let it be on the wire.
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	s.cmd.Process.Signal(os.Interrupt)
	if code := s.finish(t); code != exitCanceled {
		t.Fatalf("exit %d, want %d\n%s\n%s", code, exitCanceled, s.text.String(), s.errb.String())
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("%s to end after the second Ctrl-C", d)
	}
}

// TestProgress: a progress bar draws on a terminal and never on a pipe.
func TestProgress(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	p := newProgressTo(&buf, 4<<20, "reading", true)
	p.add(2 << 20)
	p.bar.RenderBlank()
	if !strings.Contains(buf.String(), "reading") || !strings.Contains(buf.String(), "50%") {
		t.Errorf("bar: %q", buf.String())
	}
	p.finish()
	var nilBar *progress
	nilBar.add(1) // no terminal: nothing, no panic
	nilBar.finish()

	tg := cliTestTarget(t, iscsitest.Config{})
	r := iscsictl(t, "read", "iscsi://"+tg.Addr()+"/"+cliTarget+"/0", "--lba", "0", "--blocks", "2048", "--out", os.DevNull).want(t, exitOK)
	if strings.ContainsAny(r.stderr+r.stdout, "\r\x1b") || strings.Contains(r.stderr, "%") {
		t.Errorf("progress on a pipe:\nstdout %q\nstderr %q", r.stdout, r.stderr)
	}
}
