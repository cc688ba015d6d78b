package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/peers"
)

// agentProc is an `iscsictl serve` the test runs.
type agentProc struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	// ready is closed at the agent's first line on stdout, outDone when
	// its stdout ends.
	ready, outDone chan struct{}
}

// syncBuffer is a strings.Builder for a process's stderr, read while the
// process writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// startAgentProc starts the binary's agent with its state in stateDir and
// waits for its ready line.
func startAgentProc(t *testing.T, socket, stateDir string) *agentProc {
	t.Helper()
	cmd := exec.Command(bin, "serve", "--socket", socket, "--state-dir", stateDir,
		"--initiator-name", "iqn.2026-01.org.goiscsi.test:agent", "--logout-timeout", "5s", "--log-level", "info")
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &agentProc{cmd: cmd, stderr: &syncBuffer{}, ready: make(chan struct{}), outDone: make(chan struct{})}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.outDone)
		sc := bufio.NewScanner(out)
		first := true
		for sc.Scan() {
			if first {
				close(p.ready)
				first = false
			}
		}
	}()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			<-p.outDone
			p.cmd.Wait()
		}
	})
	select {
	case <-p.ready:
	case <-p.outDone:
		t.Fatalf("the agent ended before it was ready:\n%s", p.stderr)
	case <-time.After(30 * time.Second):
		t.Fatalf("the agent did not get ready:\n%s", p.stderr)
	}
	return p
}

// stop sends SIGTERM and returns the exit status.
func (p *agentProc) stop(t *testing.T) int {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.outDone:
	case <-time.After(30 * time.Second):
		t.Fatalf("the agent did not stop on SIGTERM:\n%s", p.stderr)
	}
	p.cmd.Wait()
	if strings.Contains(p.stderr.String(), "WARNING: DATA RACE") {
		t.Errorf("the agent raced:\n%s", p.stderr)
	}
	return p.cmd.ProcessState.ExitCode()
}

// tgtdNexus returns how many I_T nexus tgtadm shows on target 1.
func tgtdNexus(t *testing.T, s *peers.Tgtd) int {
	t.Helper()
	ns, err := s.Sessions(1)
	if err != nil {
		t.Fatal(err)
	}
	return len(ns)
}

// TestAgentTgtd is the operator's story against tgtd: an agent holds the
// sessions of three separate `login` calls, `sessions` lists them, tgtadm
// sees three I_T nexus, `logout --target` logs out of all (exit 0, tgtadm
// sees none), a second finds none (exit 2); one session out of two is
// logged out with `--session`; an automatic node survives the agent's
// restart and its session is back, and SIGTERM logs it out (exit 0).
func TestAgentTgtd(t *testing.T) {
	s := startTgtd(t)
	dir := t.TempDir()
	sock, state := filepath.Join(dir, "run", "agent.sock"), filepath.Join(dir, "state")
	p := startAgentProc(t, sock, state)

	st, err := os.Stat(sock)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v, %v: want mode 0600", st, err)
	}

	for i := range 3 {
		v := iscsictl(t, "login", "--socket", sock, "--portal", s.Addr, "--target", tgtdTarget, "--json").want(t, exitOK).json(t)
		if n := len(path(t, v, "sessions").([]any)); n != 1 || path(t, v, "agent") != sock || path(t, v, "logout") != nil {
			t.Fatalf("login %d: %v", i+1, v)
		}
	}
	v := iscsictl(t, "sessions", "--socket", sock, "--json").want(t, exitOK).json(t)
	list := path(t, v, "sessions").([]any)
	if len(list) != 3 {
		t.Fatalf("sessions: %v", v)
	}
	tsihs := map[string]bool{}
	for i := range list {
		tsihs[path(t, list, i, "tsih").(string)] = true
		if path(t, list, i, "state") != "logged in" || path(t, list, i, "target") != tgtdTarget ||
			path(t, list, i, "params", "MaxRecvDataSegmentLength") == nil || path(t, list, i, "counters", "bytesReceived").(float64) == 0 {
			t.Errorf("session %d: %v", i, list[i])
		}
	}
	if len(tsihs) != 3 {
		t.Errorf("TSIHs %v: want three different", tsihs)
	}
	if n := tgtdNexus(t, s); n != 3 {
		t.Fatalf("tgtadm shows %d I_T nexus, want 3", n)
	}
	r := iscsictl(t, "sessions", "--socket", sock).want(t, exitOK)
	if strings.Count(r.stdout, tgtdTarget) != 3 || !strings.Contains(r.stdout, "logged in") {
		t.Errorf("sessions table:\n%s", r.stdout)
	}

	v = iscsictl(t, "logout", "--socket", sock, "--target", tgtdTarget, "--json").want(t, exitOK).json(t)
	if path(t, v, "logout", "outcome") != "success" || path(t, v, "logout", "loggedOut") != 3.0 || path(t, v, "logout", "hresult") != "0x00000000" {
		t.Errorf("logout: %v", v)
	}
	waitNoSessions(t, s, 1)
	r = iscsictl(t, "logout", "--socket", sock, "--target", tgtdTarget).want(t, exitNotFound)
	if !strings.Contains(r.stdout, "Outcome: session not found (HRESULT 0x8004270A)") {
		t.Errorf("second logout:\n%s", r.stdout)
	}

	// One session of two.
	var keep, drop string
	for i := range 2 {
		v := iscsictl(t, "login", "--socket", sock, "--portal", s.Addr, "--target", tgtdTarget, "--json").want(t, exitOK).json(t)
		tsih := path(t, v, "sessions", 0, "tsih").(string)
		if i == 0 {
			drop = tsih
		} else {
			keep = tsih
		}
	}
	v = iscsictl(t, "logout", "--socket", sock, "--session", drop, "--json").want(t, exitOK).json(t)
	if path(t, v, "logout", "loggedOut") != 1.0 || path(t, v, "logout", "sessions", 0, "tsih") != drop {
		t.Errorf("logout --session %s: %v", drop, v)
	}
	iscsictl(t, "logout", "--socket", sock, "--session", drop).want(t, exitNotFound)
	v = iscsictl(t, "sessions", "--socket", sock, "--json").want(t, exitOK).json(t)
	if l := path(t, v, "sessions").([]any); len(l) != 1 || path(t, l, 0, "tsih") != keep {
		t.Errorf("after logout --session: %v", v)
	}
	if n := tgtdNexus(t, s); n != 1 {
		t.Errorf("tgtadm shows %d I_T nexus, want 1", n)
	}

	// An automatic node; SIGTERM logs out of the session left.
	iscsictl(t, "node", "add", "--socket", sock, "--portal", s.Addr, "--target", tgtdTarget, "--startup", "automatic").want(t, exitOK)
	v = iscsictl(t, "node", "list", "--socket", sock, "--json").want(t, exitOK).json(t)
	if path(t, v, "nodes", 0, "startup") != "automatic" {
		t.Errorf("node list: %v", v)
	}
	if code := p.stop(t); code != exitOK {
		t.Fatalf("agent exit status %d, want 0:\n%s", code, p.stderr)
	}
	waitNoSessions(t, s, 1)
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("the socket is left after the agent stopped: %v", err)
	}

	// Without an agent, node records are read from the state directory.
	v = iscsictl(t, "node", "show", tgtdTarget, "--state-dir", state, "--json").want(t, exitOK).json(t)
	if path(t, v, "node", "target") != tgtdTarget || path(t, v, "node", "portals", 0) != s.Addr {
		t.Errorf("node show without an agent: %v", v)
	}

	// A new agent on the same state logs in to the automatic node.
	p = startAgentProc(t, sock, state)
	deadline := time.Now().Add(20 * time.Second)
	for {
		v = iscsictl(t, "sessions", "--socket", sock, "--json").want(t, exitOK).json(t)
		if l := path(t, v, "sessions").([]any); len(l) == 1 {
			if path(t, l, 0, "node") != tgtdTarget {
				t.Errorf("the automatic session: %v", l[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the automatic node's session is not back: %v\n%s", v, p.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := tgtdNexus(t, s); n != 1 {
		t.Errorf("tgtadm shows %d I_T nexus after the restart, want 1", n)
	}
	if code := p.stop(t); code != exitOK {
		t.Fatalf("agent exit status %d, want 0:\n%s", code, p.stderr)
	}
	waitNoSessions(t, s, 1)
	if !strings.Contains(p.stderr.String(), "logout at shutdown") {
		t.Errorf("the agent's log does not show its logout:\n%s", p.stderr)
	}
}

// TestAgentAbsent: without an agent, login and logout run in-process (an
// unreachable $ISCSICTL_SOCKET is no error), an unreachable --socket is an
// error, and the commands that need the agent say how to start one.
func TestAgentAbsent(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	gone := filepath.Join(dir, "none.sock")
	r := iscsictlWith(t, runOpts{env: []string{envSocket + "=" + gone}}, "logout", "--target", "iqn.2001-04.com.example:disk1", "--sessions", "0").want(t, exitNotFound)
	if !strings.Contains(r.stdout, "Outcome: session not found") {
		t.Errorf("in-process logout:\n%s", r.stdout)
	}
	r = iscsictl(t, "logout", "--socket", gone, "--target", "iqn.2001-04.com.example:disk1", "--sessions", "0").want(t, exitError)
	if !strings.Contains(r.stderr, "no agent at --socket "+gone) {
		t.Errorf("unreachable --socket: %q", r.stderr)
	}
	r = iscsictlWith(t, runOpts{env: []string{envSocket + "=" + gone}}, "sessions").want(t, exitError)
	if !strings.Contains(r.stderr, "iscsictl serve") {
		t.Errorf("sessions without an agent: %q", r.stderr)
	}
	iscsictlWith(t, runOpts{env: []string{envSocket + "=" + gone}}, "logout", "--session", "1").want(t, exitError)
	iscsictl(t, "node", "frob").want(t, exitInvalidArg)
	iscsictl(t, "serve", "--listen-tcp", "127.0.0.1:0", "--socket", gone).want(t, exitInvalidArg)

	// Node records in a state directory, no agent.
	state := filepath.Join(dir, "state")
	env := runOpts{env: []string{envSocket + "=" + gone}}
	iscsictlWith(t, env, "node", "add", "--state-dir", state, "--target", tgtdTarget, "--portal", "127.0.0.3", "--chap-secret-env", "S").want(t, exitOK)
	iscsictlWith(t, env, "node", "add", "--state-dir", state, "--target", tgtdTarget, "--startup", "sometimes", "--portal", "h").want(t, exitInvalidArg)
	v := iscsictlWith(t, env, "node", "list", "--state-dir", state, "--json").want(t, exitOK).json(t)
	if path(t, v, "nodes", 0, "portals", 0) != "127.0.0.3:3260" || path(t, v, "nodes", 0, "auth", "secretEnv") != "S" ||
		path(t, v, "nodes", 0, "startup") != "manual" {
		t.Errorf("node list: %v", v)
	}
	iscsictlWith(t, env, "node", "delete", "--state-dir", state, tgtdTarget).want(t, exitOK)
	iscsictlWith(t, env, "node", "delete", "--state-dir", state, tgtdTarget).want(t, exitError)
}
