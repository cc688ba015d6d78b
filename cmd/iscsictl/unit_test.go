package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/agent/api"
	"github.com/goiscsi/iscsi/capture"
	"github.com/goiscsi/iscsi/initiator"
	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
)

func TestDescribe(t *testing.T) {
	_, nameErr := initiator.NormalizeName("disk1")
	refused := &net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 3260},
		Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}}
	login := func(err error) error {
		return &stepError{step: "logging in", portal: "127.0.0.1:3260", target: "iqn.2001-04.com.example:disk1", timeout: 15 * time.Second, err: err}
	}
	tests := []struct {
		err  error
		code int
		msg  string
	}{
		{refused, exitError, "connection refused at 127.0.0.1:3260"},
		{login(fmt.Errorf("dial: %w", refused)), exitError, "connection refused at 127.0.0.1:3260"},
		{login(&session.LoginError{Status: pdu.LoginTargetNotFound}), exitError,
			"target iqn.2001-04.com.example:disk1 not found on portal 127.0.0.1:3260 (0x0203)"},
		{login(&session.LoginError{Status: pdu.LoginAuthFailed}), exitError, "authentication failed (0x0201)"},
		{login(&session.NegotiationError{Key: "CHAP_R", Reason: "target failed mutual authentication"}), exitError,
			"authentication failed: CHAP_R: target failed mutual authentication"},
		{login(&session.NegotiationError{Key: "MaxConnections", Reason: "target negotiated the key a second time"}), exitError,
			"login failed: negotiating MaxConnections: target negotiated the key a second time"},
		{login(context.DeadlineExceeded), exitError, "timed out after 15s (logging in) at 127.0.0.1:3260"},
		{nameErr, exitInvalidArg, `invalid argument: iSCSI name "disk1": must start with iqn., eui. or naa.`},
		{fmt.Errorf("--target: %w", nameErr), exitInvalidArg, `--target: invalid argument: iSCSI name "disk1"`},
		{session.ErrShortSecret, exitInvalidArg, "shorter than 12 bytes"},
		{invalidArgf("--qd must be positive"), exitInvalidArg, "--qd must be positive"},
		{&outcomeError{outcome: logout.Incomplete}, exitIncomplete, "logout incomplete"},
		{&outcomeError{outcome: logout.Failed}, exitFailed, "logout failed"},
		{&outcomeError{outcome: logout.SessionNotFound}, exitNotFound, "logout session not found"},
		{&stepError{step: "WRITE", err: &session.SCSIError{Status: 2, Sense: []byte{0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0}}},
			exitError, "SCSI command failed (WRITE): SCSI status 0x02, sense key 0x5, ASC/ASCQ 21/00"},
		{errors.New("iscsi: something"), exitError, "something"},
	}
	for _, tt := range tests {
		code, msg := describe(tt.err)
		if code != tt.code || !strings.Contains(msg, tt.msg) {
			t.Errorf("describe(%v) = %d, %q; want %d, containing %q", tt.err, code, msg, tt.code, tt.msg)
		}
		if strings.Contains(msg, "iscsi: ") {
			t.Errorf("describe(%v) = %q: internal prefix left", tt.err, msg)
		}
	}
}

func TestOutcomeExit(t *testing.T) {
	for o, want := range map[logout.Outcome]int{logout.Success: 0, logout.SessionNotFound: 2, logout.Failed: 3, logout.Incomplete: 4, logout.Canceled: 6} {
		if got := outcomeExit(o); got != want {
			t.Errorf("outcomeExit(%v) = %d, want %d", o, got, want)
		}
	}
}

func TestNormalizePortal(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1": "127.0.0.1:3260", "127.0.0.1:3261": "127.0.0.1:3261", "[::1]": "[::1]:3260",
		"::1": "[::1]:3260", "[::1]:3262": "[::1]:3262", "host.example": "host.example:3260",
	} {
		if got, err := normalizePortal(in); err != nil || got != want {
			t.Errorf("normalizePortal(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "[]"} {
		if _, err := normalizePortal(in); err == nil {
			t.Errorf("normalizePortal(%q): no error", in)
		}
	}
}

// TestLatencyHistogram: perf's percentiles, now from the HDR histogram,
// are what the nearest-rank percentiles of the samples were (the values of
// TestPercentile, which tested the sorted-samples code this replaced), and
// the histogram does not grow with the samples.
func TestLatencyHistogram(t *testing.T) {
	h := newLatencyHist()
	if h.ValueAtQuantile(50) != 0 || h.TotalCount() != 0 {
		t.Error("percentile of nothing")
	}
	size := h.ByteSize()
	for i := int64(1); i <= 1000; i++ {
		h.RecordValue(i)
	}
	for p, want := range map[float64]int64{50: 500, 99: 990, 99.9: 999, 100: 1000} {
		if got := h.ValueAtQuantile(p); got != want {
			t.Errorf("ValueAtQuantile(%v) = %v, want %v", p, got, want)
		}
	}
	// The 0th percentile of nearest rank is the least sample: perf
	// prints it as min.
	if got := h.Min(); got != 1 {
		t.Errorf("Min() = %v, want 1", got)
	}
	for range 1000 {
		h.RecordValues(123456, 1000)
	}
	if h.ByteSize() != size || h.TotalCount() != 1001000 {
		t.Errorf("after 10^6 samples: %d bytes (was %d), count %d", h.ByteSize(), size, h.TotalCount())
	}
	// 3 significant digits: a long latency within 0.1%.
	if got := h.Max(); got < 123456 || got > 123456+124 {
		t.Errorf("max %d, want 123456 within 0.1%%", got)
	}
}

func TestReadSecret(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "s")
	os.WriteFile(p, []byte("a secret of 16 b\n"), 0o600)
	if s, err := readSecret(p, "UNUSED_ENV"); err != nil || s != "a secret of 16 b" {
		t.Errorf("readSecret = %q, %v", s, err)
	}
	t.Setenv("ISCSICTL_TEST_SECRET", "from the environment")
	if s, _ := readSecret("", "ISCSICTL_TEST_SECRET"); s != "from the environment" {
		t.Errorf("readSecret from env = %q", s)
	}
	os.WriteFile(p, []byte("\n"), 0o600)
	if _, err := readSecret(p, ""); err == nil {
		t.Error("empty secret file accepted")
	}
}

// TestPcapMux records two connections at once, in writes cut anywhere,
// into one file and decodes it.
func TestPcapMux(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.pcap")
	m, err := newPcapMux(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var conns []net.Conn
	for range 2 {
		ini, tgt := net.Pipe()
		conns = append(conns, m.Wrap(ini))
		go func() {
			io.Copy(io.Discard, tgt)
			tgt.Close()
			done <- struct{}{}
		}()
	}
	// A Login Request then a NOP-Out on each connection, written at once
	// from two goroutines.
	var bhs pdu.BHS
	(&pdu.LoginRequest{Transit: true, NSG: 1, ITT: 1}).MarshalBHS(&bhs)
	var nop pdu.BHS
	(&pdu.NOPOut{Immediate: true, ITT: 2, TTT: 0xffffffff}).MarshalBHS(&nop)
	errc := make(chan error, 2)
	for _, c := range conns {
		go func() {
			for range 50 {
				if _, err := c.Write(bhs[:]); err != nil {
					errc <- err
					return
				}
				if _, err := c.Write(nop[:]); err != nil {
					errc <- err
					return
				}
			}
			errc <- c.Close()
		}()
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		<-done
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	rs, err := capture.ReadFile(path, capture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 200 {
		t.Fatalf("decoded %d PDUs, want 200", len(rs))
	}
	counts := map[string]int{}
	for _, r := range rs {
		counts[r.Src.String()]++
		if r.Err != nil {
			t.Errorf("frame %d: %v", r.Frame, r.Err)
		}
	}
	if len(counts) != 2 || counts["127.0.0.1:49152"] != 100 || counts["127.0.0.1:49153"] != 100 {
		t.Errorf("PDUs by sender: %v, want 100 from each of two connections", counts)
	}
}

// TestStateWithRecovery: the session table's STATE column says what a
// recovering session does next, and how long a failed or lost one may stay
// on the target.
func TestStateWithRecovery(t *testing.T) {
	now := time.Date(2026, 12, 2, 4, 0, 0, 0, time.UTC)
	at := func(d time.Duration) string { return now.Add(d).Format(time.RFC3339Nano) }
	for _, c := range []struct {
		state string
		r     api.Recovery
		want  string
	}{
		{"logged in", api.Recovery{}, "logged in"},
		{"recovering", api.Recovery{Attempts: 3, NextTry: at(1500 * time.Millisecond)}, "recovering (attempt 3, next in 1.5s)"},
		{"recovering", api.Recovery{Attempts: 0}, "recovering (attempt 0)"},
		{"recovering", api.Recovery{Attempts: 2, NextTry: at(-time.Second)}, "recovering (attempt 2, next in 0s)"},
		{"failed", api.Recovery{RetainUntil: at(20 * time.Second)}, "failed (the target may keep it 20s more)"},
		{"lost", api.Recovery{RetainUntil: at(-time.Second)}, "lost"},
		{"lost", api.Recovery{RetainUntil: "garbage"}, "lost"},
	} {
		if got := stateWithRecovery(c.state, c.r, now); got != c.want {
			t.Errorf("%s %+v: %q, want %q", c.state, c.r, got, c.want)
		}
	}
}
