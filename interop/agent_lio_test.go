package interop

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/peers"
)

// Exit statuses of iscsictl (cmd/iscsictl/errors.go).
const (
	ctlExitOK       = 0
	ctlExitNotFound = 2 // logout: no session to the target
)

// ctlRunTimeout bounds one iscsictl command; ctlAgentWait bounds the
// agent's start, its stop, and the automatic node's login after a restart.
const (
	ctlRunTimeout = 60 * time.Second
	ctlAgentWait  = 30 * time.Second
)

// TestAgentLIO is issue 17's operator story against LIO, as TestAgentTgtd
// (cmd/iscsictl) tells it against tgtd: an `iscsictl serve` process holds
// the sessions of three separate `login` calls; `sessions --json` lists
// three and LIO's own dynamic_sessions shows three; `logout --target` logs
// out of all (exit 0, LIO shows none) and a second finds none (exit 2); an
// automatic node makes a restarted agent log in again (one session in the
// agent and in LIO), and SIGTERM logs it out (exit 0, LIO shows none).
func TestAgentLIO(t *testing.T) {
	t.Parallel()
	bin := buildIscsictl(t)
	l := peers.StartLIO(t, peers.LIOOptions{LUNs: 1, LUNSizeMB: 16})
	name := initiatorName(t)
	dir := t.TempDir()
	sock, state := filepath.Join(dir, "run", "agent.sock"), filepath.Join(dir, "state")

	a := startCtlAgent(t, bin, sock, state, name)
	for i := range 3 {
		v := runCtl(t, bin, "login", "--socket", sock, "--portal", l.Addr, "--target", l.IQN, "--json").want(t, ctlExitOK).json(t)
		if s, ok := jsonAt(v, "sessions").([]any); !ok || len(s) != 1 || jsonAt(v, "agent") != sock || jsonAt(v, "logout") != nil {
			t.Fatalf("login %d through the agent: %v", i+1, v)
		}
	}
	v := runCtl(t, bin, "sessions", "--socket", sock, "--json").want(t, ctlExitOK).json(t)
	list, _ := jsonAt(v, "sessions").([]any)
	if len(list) != 3 || jsonAt(v, "sessionCount") != 3.0 || jsonAt(v, "agent") != sock {
		t.Fatalf("sessions: %d listed, want 3: %v", len(list), v)
	}
	tsihs := map[any]bool{}
	for i := range list {
		tsihs[jsonAt(list, i, "tsih")] = true
		if jsonAt(list, i, "state") != "logged in" || jsonAt(list, i, "target") != l.IQN || jsonAt(list, i, "portal") != l.Addr ||
			jsonAt(list, i, "params", "MaxRecvDataSegmentLength") == nil {
			t.Errorf("session %d: %v", i, list[i])
		}
	}
	if len(tsihs) != 3 {
		t.Errorf("TSIHs %v: want three different", tsihs)
	}
	waitLIOSessions(t, l, name, 3)

	v = runCtl(t, bin, "logout", "--socket", sock, "--target", l.IQN, "--json").want(t, ctlExitOK).json(t)
	if jsonAt(v, "logout", "outcome") != "success" || jsonAt(v, "logout", "loggedOut") != 3.0 || jsonAt(v, "logout", "hresult") != "0x00000000" {
		t.Errorf("logout --target: %v", v)
	}
	waitLIOSessions(t, l, name, 0)
	r := runCtl(t, bin, "logout", "--socket", sock, "--target", l.IQN).want(t, ctlExitNotFound)
	if !strings.Contains(r.stdout, "Outcome: session not found (HRESULT 0x8004270A)") {
		t.Errorf("second logout --target:\n%s", r.stdout)
	}
	if v := runCtl(t, bin, "sessions", "--socket", sock, "--json").want(t, ctlExitOK).json(t); len(jsonList(v, "sessions")) != 0 {
		t.Errorf("sessions after the logout: %v", v)
	}

	// An automatic node, kept across the agent's restart.
	runCtl(t, bin, "node", "add", "--socket", sock, "--portal", l.Addr, "--target", l.IQN, "--startup", "automatic").want(t, ctlExitOK)
	v = runCtl(t, bin, "node", "list", "--socket", sock, "--json").want(t, ctlExitOK).json(t)
	if jsonAt(v, "nodes", 0, "target") != l.IQN || jsonAt(v, "nodes", 0, "startup") != "automatic" {
		t.Errorf("node list: %v", v)
	}
	if code := a.stop(t); code != ctlExitOK {
		t.Fatalf("agent with no session: exit status %d on SIGTERM, want 0:\n%s", code, a.stderr)
	}
	// Nothing was logged in at the first agent's end; the node record did
	// not make it log in on the way out.
	if n, err := l.Sessions(); err != nil || countOf(n, name) != 0 {
		t.Fatalf("LIO lists %q (err %v) after the first agent stopped, want none of %q", n, err, name)
	}

	a = startCtlAgent(t, bin, sock, state, name)
	deadline := time.Now().Add(ctlAgentWait)
	for {
		v = runCtl(t, bin, "sessions", "--socket", sock, "--json").want(t, ctlExitOK).json(t)
		if list := jsonList(v, "sessions"); len(list) == 1 {
			if jsonAt(list, 0, "node") != l.IQN || jsonAt(list, 0, "target") != l.IQN || jsonAt(list, 0, "state") != "logged in" {
				t.Errorf("the automatic node's session: %v", list[0])
			}
			break
		} else if len(list) > 1 {
			t.Fatalf("the restarted agent holds %d sessions, want 1: %v", len(list), v)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the automatic node's session is not back within %v: %v\n%s", ctlAgentWait, v, a.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	waitLIOSessions(t, l, name, 1)

	if code := a.stop(t); code != ctlExitOK {
		t.Fatalf("agent exit status %d on SIGTERM, want 0:\n%s", code, a.stderr)
	}
	if out := a.stdout.String(); !strings.Contains(out, "stopped; 1 of 1 sessions logged out") {
		t.Errorf("the agent's stdout does not report its logout:\n%s", out)
	}
	if !strings.Contains(a.stderr.String(), "logout at shutdown") {
		t.Errorf("the agent's log does not show its logout:\n%s", a.stderr)
	}
	waitLIOSessions(t, l, name, 0)
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the socket is left after the agent stopped: %v", err)
	}
}

// buildIscsictl builds cmd/iscsictl into a test directory, with the race
// detector when the test binary has it, and returns the binary's path.
func buildIscsictl(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "iscsictl")
	args := []string{"build", "-o", bin}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-race" && s.Value == "true" {
				args = append(args, "-race")
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", append(args, "github.com/goiscsi/iscsi/cmd/iscsictl")...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("go %s", strings.Join(args, " "))
	return bin
}

// ctlEnv is the environment of every iscsictl process: no secrets from the
// test's environment, no agent but the one named by --socket, and no second
// of sleep at the exit of a binary built with the race detector.
func ctlEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "ISCSI_CHAP") && !strings.HasPrefix(e, "ISCSICTL_SOCKET=") {
			env = append(env, e)
		}
	}
	return append(env, "GORACE=atexit_sleep_ms=0")
}

// ctlResult is one run of iscsictl.
type ctlResult struct {
	args           []string
	stdout, stderr string
	code           int
}

// runCtl runs iscsictl with args, bounded by ctlRunTimeout.
func runCtl(t *testing.T, bin string, args ...string) ctlResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ctlRunTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.WaitDelay = 5 * time.Second
	cmd.Env = ctlEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := ctlResult{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("iscsictl %s: not done within %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), ctlRunTimeout, r.stdout, r.stderr)
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("iscsictl %s: %v", strings.Join(args, " "), err)
	}
	if strings.Contains(r.stderr, "WARNING: DATA RACE") {
		t.Errorf("iscsictl %s: data race:\n%s", strings.Join(args, " "), r.stderr)
	}
	return r
}

// want checks the exit status.
func (r ctlResult) want(t *testing.T, code int) ctlResult {
	t.Helper()
	if r.code != code {
		t.Fatalf("iscsictl %s: exit status %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.args, " "), r.code, code, r.stdout, r.stderr)
	}
	return r
}

// json decodes stdout as one JSON object.
func (r ctlResult) json(t *testing.T) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("iscsictl %s: stdout is not JSON: %v\n%s\nstderr:\n%s", strings.Join(r.args, " "), err, r.stdout, r.stderr)
	}
	return v
}

// jsonAt returns the value at a path of object keys and array indexes in
// decoded JSON, nil where the path leads nowhere.
func jsonAt(v any, keys ...any) any {
	for _, k := range keys {
		switch k := k.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			a, ok := v.([]any)
			if !ok || k < 0 || k >= len(a) {
				return nil
			}
			v = a[k]
		default:
			return nil
		}
	}
	return v
}

// jsonList is the array at a path, nil if there is none.
func jsonList(v any, keys ...any) []any {
	a, _ := jsonAt(v, keys...).([]any)
	return a
}

// countOf counts the entries equal to s.
func countOf(list []string, s string) int {
	n := 0
	for _, e := range list {
		if e == s {
			n++
		}
	}
	return n
}

// lockedBuffer is a bytes.Buffer written by a process and read by the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// ctlAgent is an `iscsictl serve` process the test runs.
type ctlAgent struct {
	cmd            *exec.Cmd
	stdout, stderr *lockedBuffer
	// ready is closed at the agent's first line on stdout (the socket is
	// up), outDone when its stdout ends.
	ready, outDone chan struct{}
	waited         bool
}

// startCtlAgent starts `iscsictl serve` with the initiator name name and
// waits for its ready line. The test's end kills it if it still runs.
func startCtlAgent(t *testing.T, bin, sock, state, name string) *ctlAgent {
	t.Helper()
	cmd := exec.Command(bin, "serve", "--socket", sock, "--state-dir", state,
		"--initiator-name", name, "--logout-timeout", "5s", "--log-level", "info")
	cmd.Env = ctlEnv()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	a := &ctlAgent{cmd: cmd, stdout: &lockedBuffer{}, stderr: &lockedBuffer{}, ready: make(chan struct{}), outDone: make(chan struct{})}
	cmd.Stderr = a.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start iscsictl serve: %v", err)
	}
	go func() {
		defer close(a.outDone)
		sc := bufio.NewScanner(out)
		first := true
		for sc.Scan() {
			a.stdout.Write(append(sc.Bytes(), '\n'))
			if first {
				close(a.ready)
				first = false
			}
		}
	}()
	t.Cleanup(func() {
		if !a.waited {
			a.cmd.Process.Kill()
			<-a.outDone
			a.cmd.Wait()
		}
	})
	select {
	case <-a.ready:
	case <-a.outDone:
		t.Fatalf("the agent ended before it was ready:\n%s", a.stderr)
	case <-time.After(ctlAgentWait):
		t.Fatalf("the agent was not ready within %v:\n%s", ctlAgentWait, a.stderr)
	}
	return a
}

// stop sends the agent SIGTERM, waits for it to end and returns its exit
// status.
func (a *ctlAgent) stop(t *testing.T) int {
	t.Helper()
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM to the agent (pid %d): %v", a.cmd.Process.Pid, err)
	}
	select {
	case <-a.outDone:
	case <-time.After(ctlAgentWait):
		t.Fatalf("the agent did not stop within %v of SIGTERM:\n%s", ctlAgentWait, a.stderr)
	}
	a.cmd.Wait()
	a.waited = true
	if strings.Contains(a.stderr.String(), "WARNING: DATA RACE") {
		t.Errorf("the agent raced:\n%s", a.stderr)
	}
	return a.cmd.ProcessState.ExitCode()
}
