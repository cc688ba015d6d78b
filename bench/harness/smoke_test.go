//go:build linux

package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/bench/internal/benchkit"
	"github.com/goiscsi/iscsi/internal/peers"
)

// The in-memory target runs in a child process: this test binary again.
func TestMain(m *testing.M) {
	benchkit.MaybeServeChild()
	os.Exit(m.Run())
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestSmoke runs the whole harness once in smoke mode (tiny durations and
// counts) so that it cannot rot: it asserts only that every row of the
// report is there, with figures rather than an error. Figures are not
// checked: speed is measured by make bench, never in tests.
func TestSmoke(t *testing.T) {
	peers.Require(t, "tgtd", "tgtadm", "iscsi-perf")
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("the harness reads /proc")
	}
	cfg, _, err := parseFlags([]string{"-smoke"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.progress = logWriter{t}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, runErr := run(ctx, cfg)
	var buf bytes.Buffer
	rep.write(&buf)
	t.Logf("report:\n%s", buf.String())
	if runErr != nil {
		t.Errorf("harness: %v", runErr)
	}
	var rows []string
	for _, c := range tgtdConfigs {
		rows = append(rows, c.Name)
	}
	for _, c := range memConfigs {
		rows = append(rows, c.Name)
	}
	rows = append(rows, "memory-tgtd", "memory-in-memory")
	for _, n := range cfg.tgtdLogoutN {
		rows = append(rows, fmt.Sprintf("logout-tgtd-%dx1", n))
	}
	for _, n := range cfg.memLogoutN {
		rows = append(rows, fmt.Sprintf("logout-inmemory-%dx1", n))
	}
	for _, n := range cfg.memLogoutN2 {
		rows = append(rows, fmt.Sprintf("logout-inmemory-%dx2", n))
	}
	// The micro-benchmarks of the wire, the text codec and the digests.
	rows = append(rows, "BenchmarkReaderDataIn/8KiB", "BenchmarkWriterSCSICommand/plain", "BenchmarkParseText",
		"BenchmarkAppendText", "BenchmarkCRC32C/8KiB")
	lines := strings.Split(buf.String(), "\n")
	for _, name := range rows {
		found := false
		for _, l := range lines {
			if !strings.HasPrefix(l, "| "+name+" |") && !strings.HasPrefix(l, "| "+name+"-") {
				continue
			}
			found = true
			if strings.Contains(l, "error") || strings.Contains(l, "not run") {
				t.Errorf("row %s has no figures: %s", name, l)
			}
		}
		if !found {
			t.Errorf("row %s missing from the report", name)
		}
	}
}
