package iscsitest

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// libiscsi returns the path of one of libiscsi's tools; without it the test
// is skipped, or fails when CI=true.
func libiscsi(t *testing.T, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found (apt-get install libiscsi-bin): %v", tool, err)
		}
		t.Skipf("%s not found (apt-get install libiscsi-bin); skipping the libiscsi interop test", tool)
	}
	return p
}

func runTool(t *testing.T, path string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", path, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestLibiscsi has libiscsi, an independent initiator, log in to the
// target, inquire, read the capacity and discover.
func TestLibiscsi(t *testing.T) {
	inq := libiscsi(t, "iscsi-inq")
	rc16 := libiscsi(t, "iscsi-readcapacity16")
	for _, cfg := range []Config{
		{LUNs: []int64{64 << 20, 1 << 20}},
		{LUNs: []int64{64 << 20}, ImmediateData: true, HeaderDigests: []string{"CRC32C"}, SeparateReadStatus: true},
	} {
		tg := newTarget(t, cfg)
		url := "iscsi://" + tg.Addr() + "/" + DefaultName + "/0"
		out := runTool(t, inq, url)
		if !strings.Contains(out, "GOISCSI") || !strings.Contains(out, "iscsitest") {
			t.Errorf("iscsi-inq output lacks the vendor and product:\n%s", out)
		}
		out = runTool(t, inq, "-e", "1", "-c", "131", url)
		if !strings.Contains(out, DefaultName) {
			t.Errorf("iscsi-inq of VPD 0x83 lacks the target name:\n%s", out)
		}
		out = runTool(t, rc16, url)
		if !strings.Contains(out, "LOGICAL BLOCK LENGTH IN BYTES:512") || !strings.Contains(out, "Total size:67108864") {
			t.Errorf("iscsi-readcapacity16 output:\n%s", out)
		}
		// iscsi-ls offers no digests, which the second target requires.
		if ls, err := exec.LookPath("iscsi-ls"); err == nil && cfg.HeaderDigests == nil {
			out = runTool(t, ls, "-s", "iscsi://"+tg.Addr())
			if !strings.Contains(out, DefaultName) || !strings.Contains(out, "Lun:0") {
				t.Errorf("iscsi-ls output:\n%s", out)
			}
		}
		tg.Close()
		for _, s := range tg.Sessions() {
			// iscsi-ls drops its session to list the LUNs without a logout.
			if !s.LoggedOut && !strings.HasSuffix(s.InitiatorName, "iscsi-ls") {
				t.Errorf("libiscsi left session %#x without logging out: %+v", s.TSIH, s)
			}
		}
	}
}
