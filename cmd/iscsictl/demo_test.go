package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/peers"
)

// closedPort returns a loopback port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	return peers.FreePort(t)
}

// connStates returns the states of session i's connections in a logout
// result.
func connStates(t *testing.T, v map[string]any, i int) []string {
	t.Helper()
	var out []string
	for _, c := range path(t, v, "logout", "sessions", i, "connections").([]any) {
		out = append(out, c.(map[string]any)["state"].(string))
	}
	return out
}

func TestDemo(t *testing.T) {
	t.Parallel()
	r := iscsictl(t, "demo", "--json").want(t, exitOK)
	v := r.json(t)
	if got := path(t, v, "logout", "outcome"); got != "success" {
		t.Errorf("outcome %v", got)
	}
	if got := path(t, v, "logout", "hresult"); got != "0x00000000" {
		t.Errorf("hresult %v", got)
	}
	if got := path(t, v, "verified"); got != true {
		t.Errorf("verified %v", got)
	}
	ss := path(t, v, "logout", "sessions").([]any)
	if len(ss) != 4 {
		t.Fatalf("%d sessions, want 4", len(ss))
	}
	for i := range ss {
		if st := connStates(t, v, i); len(st) != 2 || st[0] != "logged out" || st[1] != "logged out" {
			t.Errorf("session %d: connections %v, want 2 logged out", i, st)
		}
	}

	// The text output: the table and the outcome with its HRESULT.
	r = iscsictl(t, "demo", "--sessions", "2", "--conns", "3").want(t, exitOK)
	for _, want := range []string{"Logged in: 2 sessions x 3 connections", "verified", "close connection",
		"Outcome: success (HRESULT 0x00000000): 2 of 2 sessions logged out"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "\r") {
		t.Error("a progress line on a stdout that is not a terminal")
	}
}

// TestDemoFaults injects each fault into one session (incomplete, exit 4)
// and into every session (failed, exit 3).
func TestDemoFaults(t *testing.T) {
	t.Parallel()
	faultState := map[string]string{
		"cleanup-failed":       "refused",
		"cid-not-found":        "refused",
		"recovery-unsupported": "refused",
		"no-response":          "timeout",
		"reset":                "reset",
		"close":                "reset",
		"reject":               "rejected",
	}
	if len(faultState) != len(faults) {
		t.Fatalf("the test covers %d faults of %d", len(faultState), len(faults))
	}
	for fault, state := range faultState {
		for _, all := range []bool{false, true} {
			name := fault + "/one"
			failN, outcome, hresult, code := "1", "incomplete", "0x80042710", exitIncomplete
			if all {
				name = fault + "/all"
				failN, outcome, hresult, code = "3", "failed", "0x80042709", exitFailed
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				r := iscsictl(t, "demo", "--json", "--sessions", "3", "--conns", "2", "--fail-sessions", failN,
					"--fault", fault, "--logout-timeout", "300ms").want(t, code)
				v := r.json(t)
				if got := path(t, v, "logout", "outcome"); got != outcome {
					t.Errorf("outcome %v, want %v", got, outcome)
				}
				if got := path(t, v, "logout", "hresult"); got != hresult {
					t.Errorf("hresult %v, want %v", got, hresult)
				}
				failed := 0
				for i := range 3 {
					st := connStates(t, v, i)
					if path(t, v, "logout", "sessions", i, "loggedOut") == true {
						continue
					}
					failed++
					for _, s := range st {
						if s != state {
							t.Errorf("session %d: connection states %v, want %s", i, st, state)
						}
					}
				}
				if want, _ := strconv.Atoi(failN); failed != want {
					t.Errorf("%d sessions not logged out, want %s", failed, failN)
				}
			})
		}
	}
}

// TestDemoPerSession: with reason 0 on one connection per session the
// others are closed with the session.
func TestDemoPerSession(t *testing.T) {
	t.Parallel()
	v := iscsictl(t, "demo", "--json", "--strategy", "per-session", "--sessions", "2", "--conns", "3").want(t, exitOK).json(t)
	if got := path(t, v, "logout", "strategy"); got != "per-session" {
		t.Errorf("strategy %v", got)
	}
	for i := range 2 {
		st := connStates(t, v, i)
		if st[0] != "logged out" || st[1] != "closed with session" || st[2] != "closed with session" {
			t.Errorf("session %d: %v", i, st)
		}
	}
}

// TestDemoIO logs out with I/O running: commands in flight drain first.
// Writes run on one connection per session: iscsitest rejects the
// unsolicited Data-Out of a WRITE it holds for an earlier CmdSN of another
// connection (reported to its author).
func TestDemoIO(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"--io-write", "--conns", "1"}, {"--conns", "2"}} {
		t.Run(strings.Join(args, ""), func(t *testing.T) {
			t.Parallel()
			v := iscsictl(t, append([]string{"demo", "--json", "--io", "--drain", "2s"}, args...)...).want(t, exitOK).json(t)
			if n := path(t, v, "io", "completed").(float64); n < 1 {
				t.Errorf("no I/O completed during the logout: %v", path(t, v, "io"))
			}
			if n := path(t, v, "io", "failed").(float64); n != 0 {
				t.Errorf("commands failed despite --drain: %v", path(t, v, "io"))
			}
		})
	}
}

// TestDemoPcap records the demo, checks the capture with tshark and
// decodes it with the decode command.
func TestDemoPcap(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "demo.pcap")
	v := iscsictl(t, "demo", "--json", "--sessions", "3", "--conns", "2", "--pcap", file).want(t, exitOK).json(t)
	_, portStr, err := net.SplitHostPort(path(t, v, "target", "addr").(string))
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(portStr)

	d := iscsictl(t, "decode", file, "--port", portStr, "--json").want(t, exitOK).json(t)
	pdus := path(t, d, "pdus").([]any)
	counts := map[string]int{}
	for _, p := range pdus {
		m := p.(map[string]any)
		counts[m["name"].(string)]++
		if e, ok := m["error"]; ok {
			t.Errorf("PDU %v: %v", m["frame"], e)
		}
	}
	if counts["Logout Request"] != 6 || counts["Logout Response"] != 6 {
		t.Errorf("PDUs decoded: %v, want 6 Logout Requests and 6 Responses", counts)
	}
	txt := iscsictl(t, "decode", "--port", portStr, file).want(t, exitOK)
	if !strings.Contains(txt.stdout, "Logout Response") || !strings.Contains(txt.stdout, "response 0 (success)") {
		t.Errorf("decode:\n%s", txt.stdout)
	}

	// Every connection of the sessions carries a Logout Request and its
	// Response.
	checkTsharkLogouts(t, file, port, 6)
}

// TestDemoInterrupt: an interrupt during a logout that waits for answers
// that never come cancels it; the connections still waiting are reported
// canceled and the sessions not logged out; the outcome is canceled.
func TestDemoInterrupt(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "demo", "--fail-sessions", "2", "--fault", "no-response", "--logout-timeout", "25s")
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		text.WriteString(sc.Text() + "\n")
		if strings.HasPrefix(sc.Text(), "I/O: ") {
			break // the logout starts now
		}
	}
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	cmd.Process.Signal(os.Interrupt)
	rest, _ := io.ReadAll(out)
	text.Write(rest)
	err = cmd.Wait()
	var ee *exec.ExitError
	// Issue 15: a canceled logout has its own outcome and status.
	if !errors.As(err, &ee) || ee.ExitCode() != exitCanceled {
		t.Fatalf("exit %v, want status %d\n%s", err, exitCanceled, text.String())
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %s to end after the interrupt", d)
	}
	if n := strings.Count(text.String(), "canceled before a Logout Response came"); n != 4 {
		t.Errorf("%d connections reported canceled, want 4:\n%s", n, text.String())
	}
}
