package iscsitest

import (
	"context"
	"os"
	"os/exec"
	"regexp"
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

// conformance lists the iscsi-test-cu tests the target passes. Left out:
// iSCSI.iSCSIdatasn, whose reconnect turns immediate data back on so that
// a write it expects to fail never sends the bad Data-Out; and commands the
// target does not implement (they only skip).
var conformance = []string{
	"iSCSI.iSCSIcmdsn.*", "iSCSI.iSCSIResiduals.*",
	"SCSI.Inquiry.*", "SCSI.Mandatory.*", "SCSI.ModeSense6.*", "SCSI.TestUnitReady.*",
	"SCSI.ReadCapacity10.*", "SCSI.ReadCapacity16.*", "SCSI.Read6.*", "SCSI.Read10.*", "SCSI.Read12.*",
	"SCSI.Read16.*", "SCSI.Write10.*", "SCSI.Write12.*", "SCSI.Write16.*",
}

var cuSummary = regexp.MustCompile(`tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)`)

// TestLibiscsiConformance runs libiscsi's conformance tests of the iSCSI
// layer and of the commands the target implements.
func TestLibiscsiConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("about 20 s of libiscsi conformance tests; not with -short")
	}
	cu := libiscsi(t, "iscsi-test-cu")
	for _, cfg := range []Config{
		{ImmediateData: true, LUNs: []int64{16 << 20}},
		{InitialR2T: true, MaxBurstLength: 16384, FirstBurstLength: 8192, MaxOutstandingR2T: 4,
			SeparateReadStatus: true, LUNs: []int64{16 << 20}},
	} {
		tg := newTarget(t, cfg)
		url := "iscsi://" + tg.Addr() + "/" + DefaultName + "/0"
		tests := conformance
		if !cfg.InitialR2T {
			// AbortTaskSimpleAsync frees its write task twice when the abort
			// catches the write waiting for R2T data (it crashes with
			// InitialR2T=Yes); without R2T the write is done first.
			tests = append(tests, "iSCSI.iSCSITMF.*")
		}
		for _, test := range tests {
			out := runTool(t, cu, "--dataloss", "--test="+test, url)
			m := cuSummary.FindStringSubmatch(out)
			if m == nil || m[2] == "0" || m[4] != "0" {
				t.Errorf("iscsi-test-cu --test=%s: %v\n%s", test, m, out)
			}
		}
		tg.Close()
	}
}
