package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go.uber.org/goleak"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// bin is the iscsictl binary TestMain builds, run by the tests as a user
// would run it.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "iscsictl-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "iscsictl")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	cmd := exec.CommandContext(ctx, "go", append(args, ".")...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	err = cmd.Run()
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "building iscsictl:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	// The in-process tests (error mapping, pcap recording) must not leave
	// goroutines behind either.
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// result is one run of the binary.
type result struct {
	stdout, stderr string
	code           int
}

// runOpts are the environment and bound of a run.
type runOpts struct {
	env     []string
	timeout time.Duration
}

// iscsictl runs the binary with args, bounded by 60 s.
func iscsictl(t *testing.T, args ...string) result {
	t.Helper()
	return iscsictlWith(t, runOpts{}, args...)
}

func iscsictlWith(t *testing.T, o runOpts, args ...string) result {
	t.Helper()
	if o.timeout == 0 {
		o.timeout = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.WaitDelay = 5 * time.Second
	// Secrets come only from what the test gives.
	env := []string{}
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "ISCSI_CHAP") {
			env = append(env, e)
		}
	}
	// The race detector sleeps a second before a process exits, unless told
	// otherwise.
	env = append(env, "GORACE=atexit_sleep_ms=0")
	cmd.Env = append(env, o.env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("iscsictl %s: not done within %s\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), o.timeout, r.stdout, r.stderr)
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
func (r result) want(t *testing.T, code int) result {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit status %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
	return r
}

// json decodes stdout.
func (r result) json(t *testing.T) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s\nstderr:\n%s", err, r.stdout, r.stderr)
	}
	return v
}

// path returns the value at a path of keys and indexes in decoded JSON.
func path(t *testing.T, v any, keys ...any) any {
	t.Helper()
	for _, k := range keys {
		switch k := k.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("JSON: %v is not an object at %q", v, k)
			}
			v = m[k]
		case int:
			a, ok := v.([]any)
			if !ok || k >= len(a) {
				t.Fatalf("JSON: %v has no element %d", v, k)
			}
			v = a[k]
		}
	}
	return v
}

func TestUsage(t *testing.T) {
	t.Parallel()
	r := iscsictl(t).want(t, exitInvalidArg)
	if !strings.Contains(r.stderr, "Exit status:") {
		t.Errorf("usage without exit statuses:\n%s", r.stderr)
	}
	r = iscsictl(t, "help").want(t, exitOK)
	for _, c := range commands {
		if !strings.Contains(r.stdout, c.name) {
			t.Errorf("help does not list %s", c.name)
		}
	}
	iscsictl(t, "frobnicate").want(t, exitInvalidArg)
	iscsictl(t, "discover", "--no-such-flag").want(t, exitInvalidArg)
	for _, c := range commands {
		if r := iscsictl(t, c.name, "-h").want(t, exitOK); !strings.Contains(r.stderr, "-json") {
			t.Errorf("%s -h:\n%s", c.name, r.stderr)
		}
	}
	iscsictl(t, "demo", "--fault", "gremlins", "--fail-sessions", "1").want(t, exitInvalidArg)
	iscsictl(t, "demo", "--sessions", "2", "--fail-sessions", "3").want(t, exitInvalidArg)
	iscsictl(t, "perf", "--portal", "127.0.0.1", "--rw", "sideways").want(t, exitInvalidArg)
	iscsictl(t, "login", "--portal", "127.0.0.1", "--log-level", "chatty").want(t, exitInvalidArg)
}

func TestInvalidTargetName(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"logout", "--target", "disk1", "--sessions", "0"},
		{"logout", "--target", "iqn.2001-13.com.example:disk1", "--sessions", "0", "--json"},
		{"login", "--portal", "127.0.0.1:1", "--target", "eui.123"},
		{"inquiry", "--portal", "127.0.0.1:1", "--target", "iqn.2001-04.com.example:"},
	} {
		r := iscsictl(t, args...).want(t, exitInvalidArg)
		if !strings.Contains(r.stderr, "invalid argument") || strings.Contains(r.stderr, "iscsi: ") {
			t.Errorf("%v: stderr %q", args, r.stderr)
		}
	}
}

func TestLogoutWithoutSessions(t *testing.T) {
	t.Parallel()
	r := iscsictl(t, "logout", "--target", "iqn.2001-04.com.example:disk1", "--sessions", "0", "--json").want(t, exitNotFound)
	v := r.json(t)
	if got := path(t, v, "logout", "outcome"); got != "session not found" {
		t.Errorf("outcome %v", got)
	}
	if got := path(t, v, "logout", "hresult"); got != "0x8004270A" {
		t.Errorf("hresult %v", got)
	}
	r = iscsictl(t, "logout", "--target", "iqn.2001-04.com.example:disk1", "--sessions", "0").want(t, exitNotFound)
	if !strings.Contains(r.stdout, "Outcome: session not found (HRESULT 0x8004270A)") {
		t.Errorf("stdout:\n%s", r.stdout)
	}
}

func TestConnectionRefused(t *testing.T) {
	t.Parallel()
	port := closedPort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for _, args := range [][]string{
		{"discover", "--portal", addr},
		{"login", "--portal", addr, "--target", "iqn.2001-04.com.example:disk1"},
		{"logout", "--portal", addr, "--target", "iqn.2001-04.com.example:disk1", "--json"},
	} {
		r := iscsictl(t, args...).want(t, exitError)
		if want := "connection refused at " + addr; !strings.Contains(r.stderr, want) {
			t.Errorf("%v: stderr %q, want %q", args, r.stderr, want)
		}
	}
}

// TestLogFormat: --log-format json writes one JSON object per line on
// stderr, and stdout keeps the result alone.
func TestLogFormat(t *testing.T) {
	t.Parallel()
	r := iscsictl(t, "demo", "--sessions", "1", "--conns", "1", "--log-level", "debug", "--log-format", "json", "--json").want(t, exitOK)
	r.json(t)
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if len(lines) < 3 {
		t.Fatalf("%d log lines at debug:\n%s", len(lines), r.stderr)
	}
	for _, l := range lines {
		var v map[string]any
		if err := json.Unmarshal([]byte(l), &v); err != nil || v["msg"] == nil || v["level"] == nil {
			t.Errorf("log line %q is not a zap JSON line: %v", l, err)
		}
	}
}
