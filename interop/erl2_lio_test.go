package interop

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/peers"
	"github.com/goiscsi/iscsi/internal/testutil"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// The load of the connection-drop tests: each worker owns a region of
// dropBlocks blocks (64 KiB: at LIO's FirstBurstLength, so a write takes
// immediate data and R2Ts), writes it and reads it back, over and over.
const (
	dropWorkers = 8
	dropBlocks  = 128
	// dropOpsBefore and dropOpsAfter are the operations the load must do
	// before the cut and after it (the proof that I/O resumed).
	dropOpsBefore = 64
	dropOpsAfter  = 128
	// dropOpsWait bounds each of those waits: an ERL 0 reinstatement
	// or an ERL 2 recovery waits DefaultTime2Wait (2 s) first.
	dropOpsWait = 60 * time.Second
)

// TestLIOERL2 cuts one connection of a 4-connection session mid-I/O on one
// LIO VM (MaxConnections 4), first at LIO's ErrorRecoveryLevel 0, where the
// whole session is reinstated, then at 2 (tpgt_1/param/ErrorRecoveryLevel
// and attrib/default_erl), where only the lost connection is recovered:
// Logout reason 2 for its CID on a survivor, a replacement connection, and
// TASK REASSIGN for each of its commands.
//
//	go test -race -count=1 -v -run 'TestLIOERL2' ./interop/
func TestLIOERL2(t *testing.T) {
	// LIO 6.1.192, the VM's kernel, panicked in 1 of 4 runs of the ERL 0
	// case (a general protection fault in iscsit_inc_conn_usage_count
	// from iscsit_stop_session, on the reinstatement login) and fails the
	// ERL 2 case every time (below): a peer that crashes at random would
	// make the whole run fail at random, so both run on demand, documented
	// in docs/RELIABILITY.md (R21, "ERL 2 against LIO 6.1"); istgt's
	// TestIstgtMCSDropRecovers runs the ERL 0 case in every run.
	mcs, erl2 := os.Getenv("GOISCSI_LIO_MCSDROP") != "", os.Getenv("GOISCSI_LIO_ERL2") != ""
	if !mcs && !erl2 {
		t.Skip("LIO 6.1 crashes on an MC/S connection drop now and then (docs/RELIABILITY.md R21); GOISCSI_LIO_MCSDROP=1 and GOISCSI_LIO_ERL2=1 run it")
	}
	t.Parallel()
	l := peers.StartLIO(t, peers.LIOOptions{LUNs: 1, LUNSizeMB: lioLUNMB, MaxConnections: 4})
	t.Cleanup(func() { keepConsole(t, l) })
	t.Run("ERL0/MCSDrop", func(t *testing.T) {
		if !mcs {
			t.Skip("GOISCSI_LIO_MCSDROP=1 runs it")
		}
		testLIOMCSDropERL0(t, l)
	})
	t.Run("ERL2/ConnDrop", func(t *testing.T) {
		// LIO 6.1.192 (the VM's kernel) takes the Logout reason 2,
		// the replacement connection and TASK REASSIGN of the tasks it
		// holds, then oopses freeing a reassigned command
		// (target_release_cmd_kref from iscsit_ack_from_expstatsn) or
		// leaves the session's CmdSN window stuck: see
		// docs/RELIABILITY.md. Run on demand until a kernel fixes it.
		if os.Getenv("GOISCSI_LIO_ERL2") == "" {
			t.Skip("LIO 6.1's ERL 2 connection recovery oopses or stalls (docs/RELIABILITY.md); GOISCSI_LIO_ERL2=1 runs it")
		}
		setLIOERL(t, l, 2)
		testLIOConnDropERL2(t, l)
	})
	waitLIOSessionsFor(t, l, "", 0, 30*time.Second)
}

// keepConsole copies the VM's console (its kernel log) of a failed test out
// of the test's TempDir and logs the iSCSI target's and the kernel's
// complaints in it.
func keepConsole(t *testing.T, l *peers.LIO) {
	if !t.Failed() {
		return
	}
	b, err := os.ReadFile(l.Console)
	if err != nil {
		t.Logf("LIO console: %v", err)
		return
	}
	var lines []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "iSCSI") || strings.Contains(line, "iscsi") || strings.Contains(line, "BUG") ||
			strings.Contains(line, "fault") || strings.Contains(line, "RIP") || strings.Contains(line, "panic") {
			lines = append(lines, line)
		}
	}
	if dir, err := os.MkdirTemp("", "goiscsi-lio-console-"); err == nil {
		if os.WriteFile(filepath.Join(dir, "console.log"), b, 0o644) == nil {
			t.Logf("LIO console kept in %s", filepath.Join(dir, "console.log"))
		}
	}
	t.Logf("LIO console, iSCSI and kernel faults (%d lines):\n%s", len(lines), strings.Join(lines[max(0, len(lines)-150):], "\n"))
}

// setLIOERL sets LIO's ErrorRecoveryLevel key and the level its login
// gives every session of a generated node ACL (attrib/default_erl, which
// overrides the key).
func setLIOERL(t *testing.T, l *peers.LIO, erl int) {
	t.Helper()
	for _, f := range []string{"param/ErrorRecoveryLevel", "attrib/default_erl"} {
		path := "/sys/kernel/config/target/iscsi/*/tpgt_1/" + f
		out, err := l.Exec(fmt.Sprintf("for f in %s; do echo %d > $f && cat $f; done", path, erl))
		if err != nil || strings.TrimSpace(out) != fmt.Sprint(erl) {
			t.Fatalf("setting LIO's %s to %d: %q, %v", f, erl, out, err)
		}
	}
}

// testLIOConnDropERL2: at ErrorRecoveryLevel 2 the loss of one connection
// of four, cut from the initiator's side right after it sent a command or
// its data, is one ERL 2 connection recovery: no I/O fails, every
// acknowledged write reads back, the commands of the lost connection move
// (at least the one just sent), a replacement connection is logged in, the
// session is never reinstated, and it logs out cleanly.
func testLIOConnDropERL2(t *testing.T, l *peers.LIO) {
	ctx := testCtx(t)
	rec := testutil.NewRecorder(t, l.Port)
	cut := &cutter{}
	p := session.DefaultParams()
	// LIO keeps the tasks of a failed connection for DefaultTime2Retain:
	// 0 (our default offer) would leave nothing to reassign.
	p.ErrorRecoveryLevel, p.DefaultTime2Retain = 2, 20
	s := dropLogin(t, ctx, l, &p, func(c net.Conn) net.Conn { return cut.wrap(rec.Wrap(c)) })
	got := s.Params()
	if got.ErrorRecoveryLevel != 2 || got.DefaultTime2Retain == 0 {
		t.Fatalf("negotiated ErrorRecoveryLevel %d DefaultTime2Retain %d, want 2 and > 0", got.ErrorRecoveryLevel, got.DefaultTime2Retain)
	}
	tsih := s.TSIH()
	acked, start := loadAcrossCut(t, ctx, s, cut)
	info := s.ConnRecovery()
	t.Logf("ERL 2 recovery %+v; I/O resumed %v after the cut", info, time.Since(start).Round(time.Millisecond))
	if info.Recoveries != 1 || info.Failed != 0 || info.Running != 0 {
		t.Errorf("connection recoveries %d (running %d), commands failed %d: want 1, 0, 0", info.Recoveries, info.Running, info.Failed)
	}
	if info.Replaced != 1 {
		t.Errorf("replacement connections %d, want 1", info.Replaced)
	}
	if info.Moved < 1 {
		t.Errorf("commands moved by TASK REASSIGN %d, want at least the one in flight at the cut", info.Moved)
	}
	if ri := s.Recovery(); ri.Reconnects != 0 || s.TSIH() != tsih {
		t.Errorf("session reinstated (%d reconnects, TSIH %#x, was %#x): want ERL 2 to keep the session", ri.Reconnects, s.TSIH(), tsih)
	}
	if st := s.State(); st != session.SessionUp {
		t.Errorf("session %s, want up", st)
	}
	if n := len(s.Conns()); n != 4 {
		t.Errorf("%d connections after the recovery, want 4", n)
	}
	verifyRegions(t, ctx, s, acked)
	waitLIOSessions(t, l, initiatorName(t), 1)
	dropLogout(t, ctx, l, s)
	// Connections 0-3, the replacement (4): a Logout Request for
	// recovery (reason 2) on one survivor and the session's reason 0.
	if ops := rec.Opcodes(); len(ops) > 0 {
		t.Logf("capture: %d connections, %d Logout Requests, %d TMF Requests, %d TMF Responses", len(rec.Paths()),
			ops[pdu.OpLogoutRequest], ops[pdu.OpTaskMgmtRequest], ops[pdu.OpTaskMgmtResponse])
		if len(rec.Paths()) != 5 || ops[pdu.OpLogoutRequest] != 2 || ops[pdu.OpTaskMgmtResponse] < info.Moved {
			t.Errorf("capture: %d connections, %d Logout Requests, %d TMF Responses; want 5, 2, at least %d",
				len(rec.Paths()), ops[pdu.OpLogoutRequest], ops[pdu.OpTaskMgmtResponse], info.Moved)
		}
	}
}

// loadAcrossCut runs the drop load on s, cuts connection 2 mid-I/O, lets
// the load run on and stops it; every I/O that failed is a test error. It
// returns the acknowledged writes and when the cut was.
func loadAcrossCut(t *testing.T, ctx context.Context, s *session.Session, cut *cutter) (map[uint64][]byte, time.Time) {
	t.Helper()
	ld := startDropLoad(t, ctx, s)
	ld.WaitOps(t, dropOpsBefore, dropOpsWait)
	start := time.Now()
	cut.cut(t, 2)
	ld.WaitOps(t, dropOpsAfter, dropOpsWait)
	acked, errs := ld.Stop()
	for _, err := range errs {
		t.Errorf("I/O failed: %v", err)
	}
	return acked, start
}

// testLIOMCSDropERL0: at ErrorRecoveryLevel 0 the loss of one connection of
// four is the session's: the initiator, recovery on, reinstates it (a new
// TSIH) with its four connections, and the I/O goes on with nothing
// acknowledged lost; no ERL 2 recovery runs.
func testLIOMCSDropERL0(t *testing.T, l *peers.LIO) {
	ctx := testCtx(t)
	cut := &cutter{}
	p := session.DefaultParams()
	s := dropLogin(t, ctx, l, &p, cut.wrap)
	if got := s.Params().ErrorRecoveryLevel; got != 0 {
		t.Fatalf("negotiated ErrorRecoveryLevel %d, want 0 (LIO's default)", got)
	}
	tsih := s.TSIH()
	acked, start := loadAcrossCut(t, ctx, s, cut)
	ri := s.Recovery()
	t.Logf("ERL 0 recovery: %d reconnects, %d commands sent again; I/O resumed %v after the cut", ri.Reconnects, ri.Retries,
		time.Since(start).Round(time.Millisecond))
	if ri.Reconnects != 1 || s.TSIH() == tsih {
		t.Errorf("%d reconnects, TSIH %#x (was %#x): want one reinstatement", ri.Reconnects, s.TSIH(), tsih)
	}
	if info := s.ConnRecovery(); info.Recoveries != 0 {
		t.Errorf("ERL 2 connection recoveries %d at ERL 0, want 0", info.Recoveries)
	}
	// The reinstatement brings the other connections back after the
	// session is up again.
	testutil.Eventually(t, 30*time.Second, "the reinstated session's connections", func() (bool, string) {
		n := len(s.Conns())
		return n == 4, fmt.Sprintf("%d connections, want 4", n)
	})
	if st := s.State(); st != session.SessionUp {
		t.Errorf("session %s, want up", st)
	}
	verifyRegions(t, ctx, s, acked)
	waitLIOSessions(t, l, initiatorName(t), 1)
	dropLogout(t, ctx, l, s)
}

// dropLogin logs in with params, ERL 0 session recovery on (as
// initiator.Login does), and adds three connections: CIDs 0-3, dialled in
// that order. The session is closed when the test ends.
func dropLogin(t *testing.T, ctx context.Context, l *peers.LIO, p *session.Params, wrap func(net.Conn) net.Conn) *session.Session {
	t.Helper()
	s, err := session.Login(ctx, session.Config{InitiatorName: initiatorName(t), TargetName: l.IQN, Portal: l.Addr, Params: p,
		WrapConn: wrap, Recovery: &session.RecoveryConfig{ReplacementTimeout: time.Minute},
		Logger: zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))})
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	for i := 1; i < 4; i++ {
		if _, err := s.AddConnection(ctx); err != nil {
			t.Fatalf("adding connection %d: %v", i, err)
		}
	}
	logParams(t, t.Name(), s)
	return s
}

// dropLogout logs s out (reason 0) and waits for LIO's session list to
// lose it.
func dropLogout(t *testing.T, ctx context.Context, l *peers.LIO, s *session.Session) {
	t.Helper()
	res, err := s.Logout(ctx, session.LogoutOptions{Timeout: 10 * time.Second})
	if err != nil || !res.OK() {
		t.Fatalf("logout: %+v, %v", res, err)
	}
	waitLIOSessions(t, l, initiatorName(t), 0)
}

// cutter wraps the connections of a session, so that a test can cut the
// TCP connection of one from the initiator's side mid-I/O.
type cutter struct {
	mu    sync.Mutex
	conns []*cutConn // in the order dialled
}

// wrap is a Config.WrapConn.
func (c *cutter) wrap(nc net.Conn) net.Conn {
	cc := &cutConn{Conn: nc, done: make(chan struct{})}
	c.mu.Lock()
	c.conns = append(c.conns, cc)
	c.mu.Unlock()
	return cc
}

// cut closes the i-th connection dialled right after its next write (a
// command, its data, a NOP-Out) went out whole: that command is in flight,
// its answer unread.
func (c *cutter) cut(t *testing.T, i int) {
	t.Helper()
	c.mu.Lock()
	cc := c.conns[i]
	c.mu.Unlock()
	cc.armed.Store(true)
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	select {
	case <-cc.done:
	case <-timer.C:
		t.Fatalf("no write on connection %d in 30 s to cut it after", i)
	}
}

// cutConn closes its connection after its first write once armed.
type cutConn struct {
	net.Conn
	armed atomic.Bool
	done  chan struct{} // closed once cut
}

func (c *cutConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if err == nil && c.armed.CompareAndSwap(true, false) {
		c.Conn.Close()
		close(c.done)
	}
	return n, err
}

// startDropLoad starts dropWorkers writers, each owning a region of
// dropBlocks blocks of LUN 0 that it writes and reads back over and over.
func startDropLoad(t *testing.T, ctx context.Context, s *session.Session) *testutil.RegionLoad {
	return testutil.StartRegionLoad(t, ctx, testutil.RegionLoadConfig{Workers: dropWorkers, Blocks: dropBlocks,
		BlockSize: blockSize, NewIO: func(int) testutil.RegionIO { return testutil.SessionRegionIO(ctx, s, 0, blockSize) }})
}

// verifyRegions reads every region back: it holds the last write
// acknowledged.
func verifyRegions(t *testing.T, ctx context.Context, s *session.Session, acked map[uint64][]byte) {
	t.Helper()
	if len(acked) != dropWorkers {
		t.Errorf("%d regions written, want %d", len(acked), dropWorkers)
	}
	back := make([]byte, dropBlocks*blockSize)
	for lba, data := range acked {
		if err := s.Read(ctx, 0, lba, blockSize, back); err != nil {
			t.Errorf("reading the region at LBA %d back: %v", lba, err)
		} else if !bytes.Equal(back, data) {
			t.Errorf("the region at LBA %d does not hold its last acknowledged write (first difference at byte %d)", lba, testutil.FirstDiff(back, data))
		}
	}
}
