package interop

import (
	"strings"
	"testing"

	"github.com/goiscsi/iscsi/internal/peers"
	"github.com/goiscsi/iscsi/internal/testutil"
	"github.com/goiscsi/iscsi/session"
)

// TestLIOERL1 sets ErrorRecoveryLevel=1 on LIO's portal group (configfs,
// tpgt_1/param and tpgt_1/attrib/default_erl) and logs in with both digests: the session negotiates 1,
// does I/O of every size with the recovery armed (the Reader leaves the
// stream in step after a digest error, the SNACK timers wait) and logs out
// cleanly. Corrupting a digest on a real target is not done here: the
// in-memory target's tests (session/snack_test.go) do that.
func TestLIOERL1(t *testing.T) {
	t.Parallel()
	l := peers.StartLIO(t, peers.LIOOptions{LUNs: 1, LUNSizeMB: lioLUNMB})
	// The key's value, and the level LIO's login sets on every session of
	// a generated node ACL (attrib/default_erl, which overrides the key).
	for _, f := range []string{"param/ErrorRecoveryLevel", "attrib/default_erl"} {
		path := "/sys/kernel/config/target/iscsi/*/tpgt_1/" + f
		if out, err := l.Exec("for f in " + path + "; do echo 1 > $f && cat $f; done"); err != nil || strings.TrimSpace(out) != "1" {
			t.Fatalf("setting LIO's %s to 1: %q, %v", f, out, err)
		}
	}
	p := session.DefaultParams()
	p.HeaderDigest, p.DataDigest = true, true
	s := login(t, l, &p)
	logParams(t, t.Name(), s)
	got := s.Params()
	if got.ErrorRecoveryLevel != 1 {
		t.Fatalf("negotiated ErrorRecoveryLevel %d, want 1", got.ErrorRecoveryLevel)
	}
	if !got.HeaderDigest || !got.DataDigest {
		t.Fatalf("digests HeaderDigest=%v DataDigest=%v, want both", got.HeaderDigest, got.DataDigest)
	}
	ctx := testCtx(t)
	lba := uint64(0)
	for i, n := range ioSizes {
		if err := testutil.WriteVerify(ctx, s, 0, lba, blockSize, testutil.Random(uint64(i)|0xe1<<16, n)); err != nil {
			t.Fatal(err)
		}
		lba += uint64(n / blockSize)
	}
	for _, c := range s.Conns() {
		if rs := c.RecoveryStats(); rs != (session.RecoveryStats{}) {
			t.Errorf("connection %d recovered something on a clean line: %+v", c.CID(), rs)
		}
	}
	// The logout (login's cleanup) must succeed and leave LIO's session
	// list empty.
}
