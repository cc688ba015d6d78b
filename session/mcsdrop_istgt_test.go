package session

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/testutil"
)

// TestIstgtMCSDropRecovers cuts one connection of a 4-connection session
// on istgt (ErrorRecoveryLevel 0, MaxConnections 4) mid-I/O, from the
// initiator's side: at ERL 0 the loss is the session's, so the initiator
// (recovery on) reinstates it with a new TSIH and its four connections,
// the writers and readers go on without an error, every region holds its
// last acknowledged write, no ERL 2 recovery runs, and the session logs
// out cleanly.
//
//	go test -race -count=1 -v -run TestIstgtMCSDropRecovers ./session/
func TestIstgtMCSDropRecovers(t *testing.T) {
	pt := istgtPeer().start(t)
	ctx := interopCtx(t)
	rec := testutil.NewRecorder(t, pt.port)
	cfg := pt.config(rec)
	cfg.Recovery = &RecoveryConfig{ReplacementTimeout: time.Minute}
	s := mustLogin(t, ctx, cfg)
	t.Cleanup(func() { s.Close() })
	if got := s.Params().ErrorRecoveryLevel; got != 0 {
		t.Fatalf("negotiated ErrorRecoveryLevel %d, want istgt's 0", got)
	}
	for i := 1; i < 4; i++ {
		if _, err := s.AddConnection(ctx); err != nil {
			t.Fatalf("adding connection %d: %v", i, err)
		}
	}
	tsih := s.TSIH()
	const workers, blocks = 8, 128
	ld := erl2Load(t, ctx, s, pt.lun, workers, blocks)
	ld.WaitOps(t, 64, time.Minute)
	victim := s.Conns()[2]
	waitFor(t, func() bool { return len(victim.inFlight()) > 0 })
	victim.nc.Close()
	ld.WaitOps(t, 128, time.Minute)
	acked, errs := ld.Stop()
	for _, err := range errs {
		t.Errorf("I/O failed: %v", err)
	}
	ri := s.Recovery()
	t.Logf("ERL 0 recovery: %d reconnects, %d commands sent again", ri.Reconnects, ri.Retries)
	if ri.Reconnects != 1 || s.TSIH() == tsih {
		t.Errorf("%d reconnects, TSIH %#x (was %#x): want one reinstatement", ri.Reconnects, s.TSIH(), tsih)
	}
	if info := s.ConnRecovery(); info.Recoveries != 0 {
		t.Errorf("ERL 2 connection recoveries %d at ERL 0, want 0", info.Recoveries)
	}
	testutil.Eventually(t, 30*time.Second, "the reinstated session's connections", func() (bool, string) {
		n := len(s.Conns())
		return n == 4, fmt.Sprintf("%d connections, want 4", n)
	})
	if len(acked) != workers {
		t.Errorf("%d regions written, want %d", len(acked), workers)
	}
	back := make([]byte, blocks*512)
	for lba, data := range acked {
		if err := s.Read(ctx, pt.lun, lba, 512, back); err != nil {
			t.Errorf("reading the region at LBA %d back: %v", lba, err)
		} else if !bytes.Equal(back, data) {
			t.Errorf("the region at LBA %d does not hold its last acknowledged write (first difference at byte %d)", lba, testutil.FirstDiff(back, data))
		}
	}
	pt.logout(t, ctx, s)
}
