package session

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/testutil"
	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/pdu"
)

// erl2Session logs in to an in-memory target at ErrorRecoveryLevel 2 with
// n connections.
func erl2Session(t *testing.T, tcfg iscsitest.Config, n int, rc *RecoveryConfig) (*iscsitest.Target, *Session) {
	t.Helper()
	tcfg.ErrorRecoveryLevel, tcfg.MaxConnections = 2, 4
	tcfg.QueueDepth = 128
	tg := newTestTarget(t, tcfg)
	cfg := testTargetConfig(tg, nil)
	p := DefaultParams()
	p.ErrorRecoveryLevel, p.DefaultTime2Retain, p.DefaultTime2Wait = 2, 20, 0
	cfg.Params = &p
	cfg.Recovery = rc
	s := mustLogin(t, interopCtx(t), cfg)
	t.Cleanup(func() { s.Close() })
	if got := s.Params().ErrorRecoveryLevel; got != 2 {
		t.Fatalf("ErrorRecoveryLevel negotiated %d, want 2", got)
	}
	for i := 1; i < n; i++ {
		if _, err := s.AddConnection(interopCtx(t)); err != nil {
			t.Fatal(err)
		}
	}
	return tg, s
}

// erl2Load starts workers writers that each own a region of blocks of lun,
// write it and read it back with Session.Write and Read, until stopped.
func erl2Load(t *testing.T, ctx context.Context, s *Session, lun, workers, blocks int) *testutil.RegionLoad {
	return testutil.StartRegionLoad(t, ctx, testutil.RegionLoadConfig{Workers: workers, Blocks: blocks,
		NewIO: func(int) testutil.RegionIO { return testutil.SessionRegionIO(ctx, s, lun, 512) }})
}

// cutOneAndCheck lets a region load run, closes the socket of the
// session's connection 1 from the initiator's side mid-I/O, lets the load
// run on, stops it, and checks: no I/O failed, one connection recovery and
// no command failed, the session up, and the LUN holding every region's
// last acknowledged write.
func cutOneAndCheck(t *testing.T, tg *iscsitest.Target, s *Session, ld *testutil.RegionLoad) {
	t.Helper()
	ld.WaitOps(t, 200, 20*time.Second)
	victim := s.Conns()[1]
	inflight := len(victim.inFlight())
	victim.nc.Close()
	ld.WaitOps(t, 400, 20*time.Second)
	acked, errs := ld.Stop()
	for _, err := range errs {
		t.Errorf("I/O failed: %v", err)
	}
	info := s.ConnRecovery()
	t.Logf("in flight at the cut %d; recovery %+v", inflight, info)
	if info.Recoveries != 1 || info.Failed != 0 {
		t.Errorf("connection recoveries %d, failed %d: want 1 and 0", info.Recoveries, info.Failed)
	}
	if s.State() != SessionUp {
		t.Errorf("session %s, want up", s.State())
	}
	lun := tg.LUNData(0)
	for lba, data := range acked {
		if !bytes.Equal(lun[lba*512:lba*512+uint64(len(data))], data) {
			t.Errorf("region at LBA %d: the LUN does not hold the last acknowledged write", lba)
		}
	}
}

// erl2Targets are the two ways the in-memory target answers that the
// connection-loss tests run against: a read's status in its last Data-In,
// writes with immediate data; a separate SCSI Response, writes waiting for
// R2Ts in bursts of 8 KiB.
var erl2Targets = []struct {
	name string
	cfg  iscsitest.Config
}{
	{"status in Data-In", iscsitest.Config{}},
	{"separate status, R2T writes", iscsitest.Config{SeparateReadStatus: true, InitialR2T: true, MaxBurstLength: 8192}},
}

func TestERL2ConnLossMovesCommands(t *testing.T) {
	for _, tc := range erl2Targets {
		t.Run(tc.name, func(t *testing.T) {
			tg, s := erl2Session(t, tc.cfg, 4, nil)
			ctx := interopCtx(t)
			cutOneAndCheck(t, tg, s, erl2Load(t, ctx, s, 0, 16, 64))
			if n := len(s.Conns()); n != 4 {
				t.Errorf("%d connections after the recovery, want 4 (a replacement)", n)
			}
			if st := tg.Stats(); st.LogoutRequests[pdu.LogoutRemoveForRecovery] != 1 {
				t.Errorf("Logout reason 2 requests %d, want 1", st.LogoutRequests[pdu.LogoutRemoveForRecovery])
			}
			mustLogout(t, ctx, s)
		})
	}
}

// cutUnderRead starts a read on the session's connection 1, which the
// target's hook holds until release is closed, closes that connection's
// socket once the read is in flight, and releases the target: the read is
// then a command of a lost connection. Its error comes on the channel.
func cutUnderRead(t *testing.T, ctx context.Context, s *Session, release chan struct{}) <-chan error {
	t.Helper()
	c1 := s.Conns()[1]
	errc := make(chan error, 1)
	go func() {
		buf := make([]byte, 4096)
		_, err := c1.Execute(ctx, &Command{CDB: read10(0, 8), Read: buf})
		errc <- err
	}()
	waitFor(t, func() bool { return len(c1.inFlight()) == 1 })
	c1.nc.Close()
	close(release)
	return errc
}

func TestERL2TargetRefusesReassign(t *testing.T) {
	// The target holds SCSI commands on connection 1 until it is cut,
	// then refuses TASK REASSIGN.
	release := make(chan struct{})
	hook := func(ev *iscsitest.Event) iscsitest.Action {
		switch v := ev.PDU.(type) {
		case *pdu.TaskMgmtRequest:
			if v.Function == pdu.TMFTaskReassign {
				return iscsitest.Respond(&pdu.TaskMgmtResponse{ITT: v.ITT, Response: pdu.TMFReassignUnsupported}, nil)
			}
		case *pdu.SCSICommand:
			if ev.CID == 1 {
				<-release
			}
		}
		return iscsitest.Continue
	}
	_, s := erl2Session(t, iscsitest.Config{Hook: hook}, 2, nil)
	ctx := interopCtx(t)
	errc := cutUnderRead(t, ctx, s, release)
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		t.Fatal("the command held on the lost connection never ended")
	}
	var re *ReassignError
	if !errors.As(err, &re) || !re.OutcomeUnknown || !errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("error %v: want a *ReassignError with its outcome unknown", err)
	}
	if re.Step == "reassign" && (!re.Responded || re.Response != pdu.TMFReassignUnsupported) {
		t.Errorf("ReassignError %+v: want the target's answer %q", re, pdu.TMFReassignUnsupported)
	}
	if s.State() != SessionUp {
		t.Errorf("session %s, want up", s.State())
	}
	// The session goes on on the other connections.
	buf := make([]byte, 512)
	if err := s.Read(ctx, 0, 0, 512, buf); err != nil {
		t.Fatalf("I/O after the refused reassignment: %v", err)
	}
}

func TestERL2LastConnGoesToSessionRecovery(t *testing.T) {
	_, s := erl2Session(t, iscsitest.Config{}, 1, &RecoveryConfig{ReplacementTimeout: 20 * time.Second, MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	ctx := interopCtx(t)
	tsih := s.TSIH()
	s.Conns()[0].nc.Close()
	buf := make([]byte, 4096)
	if err := s.Read(ctx, 0, 0, 512, buf); err != nil {
		t.Fatalf("read across the session recovery: %v", err)
	}
	ri := s.Recovery()
	if ri.Reconnects != 1 || s.TSIH() == tsih {
		t.Errorf("reconnects %d, TSIH %#x (was %#x): want an ERL 0 reinstatement", ri.Reconnects, s.TSIH(), tsih)
	}
	if info := s.ConnRecovery(); info.Recoveries != 0 {
		t.Errorf("ERL 2 connection recoveries %d for the last connection, want 0", info.Recoveries)
	}
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10 s")
		}
		time.Sleep(time.Millisecond) // polling internal state: no signal
	}
}

func read10(lba uint32, blocks uint16) []byte {
	return []byte{0x28, 0, byte(lba >> 24), byte(lba >> 16), byte(lba >> 8), byte(lba), 0, byte(blocks >> 8), byte(blocks), 0}
}

func write10(lba uint32, blocks uint16) []byte {
	return []byte{0x2a, 0, byte(lba >> 24), byte(lba >> 16), byte(lba >> 8), byte(lba), 0, byte(blocks >> 8), byte(blocks), 0}
}

// TestERL2ReassignedWriteR2TSN cuts a write's connection right after the
// target has taken its first burst and before the initiator can read the
// R2T for the second (R2TSN 1), which is lost with the socket. After TASK
// REASSIGN the target's recovery R2Ts carry its next unused R2TSN (2 on);
// the initiator must take them as the new start, not as a gap to ask for
// with an R2T SNACK (the target cannot send R2TSN 1 on the new
// connection: the SNACK went unanswered and the new connection failed in
// turn, again and again).
func TestERL2ReassignedWriteR2TSN(t *testing.T) {
	var victim atomic.Pointer[Conn]
	var cut sync.Once
	hook := func(ev *iscsitest.Event) iscsitest.Action {
		if d, ok := ev.PDU.(*pdu.DataOut); ok && ev.CID == 1 && d.Final && d.BufferOffset == 0 {
			// The first burst is in: the target answers it with R2T 1
			// once this returns, to a socket the initiator has closed.
			if c := victim.Load(); c != nil {
				cut.Do(func() { c.nc.Close() })
			}
		}
		return iscsitest.Continue
	}
	tg, s := erl2Session(t, iscsitest.Config{Hook: hook, InitialR2T: true, MaxBurstLength: 8192}, 2, nil)
	c1 := s.Conns()[1]
	victim.Store(c1)
	ctx, cancel := context.WithTimeout(interopCtx(t), 20*time.Second)
	defer cancel()
	movedWrite(t, ctx, tg, c1, bytes.Repeat([]byte{0xa5, 0x5a, 0x11, 0xee}, 32*1024/4))
	info := s.ConnRecovery()
	if info.Recoveries != 1 || info.Moved != 1 || info.Failed != 0 {
		t.Errorf("connection recovery %+v: want 1 recovery, 1 command moved, none failed", info)
	}
	for _, c := range s.Conns() {
		if n := c.RecoveryStats().R2TSNACKs; n != 0 {
			t.Errorf("connection %d sent %d R2T SNACKs, want 0 (the recovery R2Ts are no gap)", c.CID(), n)
		}
	}
}

// movedWrite writes data at block 8 through c, whose connection the test
// cuts meanwhile, and checks the write's status and the LUN.
func movedWrite(t *testing.T, ctx context.Context, tg *iscsitest.Target, c *Conn, data []byte) {
	t.Helper()
	res, err := c.Execute(ctx, &Command{CDB: write10(8, uint16(len(data)/512)), Write: data})
	if err != nil {
		t.Fatalf("write across the connection loss: %v (target %+v)", err, tg.Stats())
	}
	if res.Status != pdu.StatusGood {
		t.Fatalf("write status %#x, want GOOD", res.Status)
	}
	if !bytes.Equal(tg.LUNData(0)[8*512:8*512+len(data)], data) {
		t.Error("the LUN does not hold the write")
	}
}

// TestERL2FirstRecoveryR2THeaderLost: a write moves by TASK REASSIGN and
// the header of the first recovery R2T the target sends for it fails its
// digest. That R2T's number, the target's next unused R2TSN, is what would
// tell a later R2T from a first one; nothing recovers it on that
// connection, so the connection fails (ErrRecoveryFailed) and connection
// recovery moves the write again. Before, the write waited for its
// caller's context: the target waited for the data of the R2T lost.
func TestERL2FirstRecoveryR2THeaderLost(t *testing.T) {
	var victim atomic.Pointer[Conn]
	var cut sync.Once
	var armed atomic.Bool
	hook := func(ev *iscsitest.Event) iscsitest.Action {
		switch p := ev.PDU.(type) {
		case *pdu.DataOut:
			if ev.CID == 1 && p.Final && p.BufferOffset == 0 {
				if c := victim.Load(); c != nil {
					cut.Do(func() { c.nc.Close() })
				}
			}
		case *pdu.TaskMgmtRequest:
			if p.Function == pdu.TMFTaskReassign {
				// The R2Ts from here on are recovery R2Ts.
				armed.Store(true)
			}
		}
		return iscsitest.Continue
	}
	fault := iscsitest.CorruptNth(func(h *pdu.BHS) bool { return armed.Load() && isR2T(h) }, 1, iscsitest.Corrupt{Header: true})
	tg := newTestTarget(t, iscsitest.Config{Hook: hook, DigestFault: fault, InitialR2T: true, MaxBurstLength: 8192,
		ErrorRecoveryLevel: 2, MaxConnections: 4, QueueDepth: 128})
	cfg := testTargetConfig(tg, nil)
	p := DefaultParams()
	p.ErrorRecoveryLevel, p.DefaultTime2Retain, p.DefaultTime2Wait = 2, 20, 0
	p.HeaderDigest, p.InitialR2T, p.ImmediateData, p.MaxBurstLength = true, true, false, 8192
	cfg.Params = &p
	s := mustLogin(t, interopCtx(t), cfg)
	t.Cleanup(func() { s.Close() })
	if _, err := s.AddConnection(interopCtx(t)); err != nil {
		t.Fatal(err)
	}
	if got := s.Params(); got.ErrorRecoveryLevel != 2 || !got.HeaderDigest {
		t.Fatalf("negotiated ErrorRecoveryLevel %d, HeaderDigest %v; want 2, true", got.ErrorRecoveryLevel, got.HeaderDigest)
	}
	c1 := s.Conns()[1]
	victim.Store(c1)
	ctx, cancel := context.WithTimeout(interopCtx(t), 10*time.Second)
	defer cancel()
	movedWrite(t, ctx, tg, c1, bytes.Repeat([]byte{0x5a, 0xa5, 0xee, 0x11}, 32*1024/4))
	if n := tg.Stats().DigestsCorrupted; n != 1 {
		t.Errorf("target corrupted %d headers, want 1", n)
	}
	if info := s.ConnRecovery(); info.Recoveries != 2 || info.Moved != 2 || info.Failed != 0 {
		t.Errorf("connection recovery %+v: want 2 recoveries (the cut, then the lost R2T), the write moved twice, none failed", info)
	}
}

// TestERL2ConnFailsAsCommandSent fails a connection at the worst moment
// of a command's send: its CmdSN taken, the command not yet marked sent
// (as when the reader fails the connection meanwhile). The connection's
// end must either hold the command (sent) or leave it unsent for good: the
// command is then sent again on another connection, and its CmdSN is
// filled, or the target would hold every later command waiting for it.
func TestERL2ConnFailsAsCommandSent(t *testing.T) {
	tg, s := erl2Session(t, iscsitest.Config{}, 2, nil)
	victim := s.Conns()[1]
	var fired atomic.Bool
	sendCommandHook = func(c *Conn, _ *task) {
		if c == victim && fired.CompareAndSwap(false, true) {
			c.fail(errors.New("test: connection lost as a command was sent"))
		}
	}
	t.Cleanup(func() { sendCommandHook = nil })
	ctx, cancel := context.WithTimeout(interopCtx(t), 20*time.Second)
	defer cancel()
	for i := 0; i < 8 && !fired.Load(); i++ {
		data := bytes.Repeat([]byte{byte(i), 0x3c}, 2048)
		if err := s.Write(ctx, 0, uint64(i*8), 512, data); err != nil {
			t.Fatalf("write %d, its connection failing as it was sent: %v", i, err)
		}
		if !bytes.Equal(tg.LUNData(0)[i*8*512:i*8*512+len(data)], data) {
			t.Fatalf("write %d: the LUN does not hold it", i)
		}
	}
	if !fired.Load() {
		t.Fatal("no command went to the connection to fail")
	}
	// Commands after the unsent one's CmdSN run: it was filled.
	for i := range 4 {
		buf := make([]byte, 4096)
		if err := s.Read(ctx, 0, uint64(i*8), 512, buf); err != nil {
			t.Fatalf("read %d after the loss: %v", i, err)
		}
	}
	if info := s.ConnRecovery(); info.Failed != 0 {
		t.Errorf("connection recovery %+v: want no command failed", info)
	}
	if s.State() != SessionUp {
		t.Errorf("session %s, want up", s.State())
	}
}

// TestERL2ConnLossMovesSubmitCalls runs writers and readers through
// Session.Submit across the cut of one connection: the calls that went out
// on it move with TASK REASSIGN, those that had not go on another
// connection, and none fails; every acknowledged write reads back.
func TestERL2ConnLossMovesSubmitCalls(t *testing.T) {
	for _, tc := range erl2Targets {
		t.Run(tc.name, func(t *testing.T) {
			tg, s := erl2Session(t, tc.cfg, 4, nil)
			ctx := interopCtx(t)
			const workers, blocks = 16, 64
			ld := testutil.StartRegionLoad(t, ctx, testutil.RegionLoadConfig{Workers: workers, Blocks: blocks,
				NewIO: func(w int) testutil.RegionIO {
					done := make(chan *Call, 1)
					call := &Call{Done: func(c *Call) { done <- c }}
					run := func(cmd Command) error {
						call.Cmd = cmd
						if err := s.Submit(call); err != nil {
							return err
						}
						select {
						case c := <-done:
							return c.Err
						case <-ctx.Done():
							return fmt.Errorf("worker %d: call never ended: %w", w, ctx.Err())
						}
					}
					return testutil.RegionIO{
						Write: func(lba uint64, b []byte) error {
							return run(Command{CDB: write10(uint32(lba), uint16(len(b)/512)), Write: b})
						},
						Read: func(lba uint64, b []byte) error {
							return run(Command{CDB: read10(uint32(lba), uint16(len(b)/512)), Read: b})
						},
					}
				}})
			cutOneAndCheck(t, tg, s, ld)
			mustLogout(t, ctx, s)
		})
	}
}

// TestERL2RefusedUnreceivedCommandGapFilled: a command lost with its
// connection before the target got it, whose TASK REASSIGN the target
// refuses with "function rejected" (as LIO 6.1 does for a task it never
// got, instead of "no such task"), fails with a *ReassignError; its CmdSN,
// which the target never saw, is filled so that the session's later
// commands, queued behind it at the target, still run.
func TestERL2RefusedUnreceivedCommandGapFilled(t *testing.T) {
	dropped := make(chan struct{})
	var once sync.Once
	hook := func(ev *iscsitest.Event) iscsitest.Action {
		switch v := ev.PDU.(type) {
		case *pdu.TaskMgmtRequest:
			if v.Function == pdu.TMFTaskReassign {
				return iscsitest.Respond(&pdu.TaskMgmtResponse{ITT: v.ITT, Response: pdu.TMFRejected}, nil)
			}
		case *pdu.SCSICommand:
			if ev.CID == 1 {
				once.Do(func() { close(dropped) })
				return iscsitest.Drop
			}
		}
		return iscsitest.Continue
	}
	_, s := erl2Session(t, iscsitest.Config{Hook: hook}, 2, nil)
	ctx := interopCtx(t)
	c1 := s.Conns()[1]
	errc := make(chan error, 1)
	go func() {
		_, err := c1.Execute(ctx, &Command{CDB: read10(0, 8), Read: make([]byte, 4096)})
		errc <- err
	}()
	select {
	case <-dropped:
	case <-ctx.Done():
		t.Fatal("the command never reached the target")
	}
	c1.nc.Close()
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		t.Fatal("the command held on the lost connection never ended")
	}
	var re *ReassignError
	if !errors.As(err, &re) || !errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("error %v: want a *ReassignError with its outcome unknown", err)
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s.Read(rctx, 0, 0, 512, make([]byte, 512)); err != nil {
		t.Fatalf("I/O after the refused reassignment: %v (the lost command's CmdSN left a gap)", err)
	}
}

// heldReadHook is a target hook for the logouts during ERL 2 connection
// recovery: SCSI commands on connection 1 wait for release, and each
// Logout Request with reason 2 is signalled on reason2 and never answered,
// so that the recovery holds the lost connection's command.
func heldReadHook(release <-chan struct{}, reason2 chan<- struct{}) iscsitest.Hook {
	return func(ev *iscsitest.Event) iscsitest.Action {
		switch v := ev.PDU.(type) {
		case *pdu.SCSICommand:
			if ev.CID == 1 {
				<-release
			}
		case *pdu.LogoutRequest:
			if v.ReasonCode == pdu.LogoutRemoveForRecovery {
				reason2 <- struct{}{}
				return iscsitest.Drop
			}
		}
		return iscsitest.Continue
	}
}

// holdLostRead logs in at ERL 2 with n connections, cuts connection 1
// under a read, and returns once the recovery holds the read (its reason-2
// request unanswered); the read's error comes on the channel.
func holdLostRead(t *testing.T, ctx context.Context, n int) (*Session, <-chan error) {
	t.Helper()
	release, reason2 := make(chan struct{}), make(chan struct{}, 1)
	_, s := erl2Session(t, iscsitest.Config{Hook: heldReadHook(release, reason2)}, n, nil)
	errc := cutUnderRead(t, ctx, s, release)
	select {
	case <-reason2:
	case <-ctx.Done():
		t.Fatal("no Logout Request with reason 2 for the lost connection")
	}
	if r := s.ConnRecovery().Running; r != 1 {
		t.Fatalf("%d connection recoveries running, want 1", r)
	}
	return s, errc
}

// TestERL2LogoutEveryConnDuringConnRecovery: the same as a reason-1 logout
// of every connection left (the logout package's PerConnection), at once
// and one after the other (the second begins after the first's end failed
// the held command): the last of them to end counts the held command,
// once.
func TestERL2LogoutEveryConnDuringConnRecovery(t *testing.T) {
	for _, together := range []bool{true, false} {
		t.Run(fmt.Sprintf("together=%v", together), func(t *testing.T) {
			ctx := interopCtx(t)
			s, errc := holdLostRead(t, ctx, 3)
			conns := s.Conns()
			if len(conns) != 2 {
				t.Fatalf("%d connections left, want 2", len(conns))
			}
			results := make([]LogoutResult, len(conns))
			var wg sync.WaitGroup
			for i, c := range conns {
				logout := func() {
					results[i] = c.Logout(ctx, LogoutOptions{Reason: pdu.LogoutCloseConnection, DrainSession: true, Timeout: 2 * time.Second})
				}
				if together {
					wg.Go(logout)
				} else {
					logout()
				}
			}
			wg.Wait()
			unknown := 0
			for _, r := range results {
				if !r.OK() {
					t.Fatalf("logout of CID %d: %+v", r.CID, r)
				}
				unknown += r.Unknown
			}
			select {
			case err := <-errc:
				if !errors.Is(err, ErrOutcomeUnknown) {
					t.Errorf("held command: %v, want its outcome unknown", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the held command did not end with the logouts")
			}
			if unknown != 1 {
				t.Errorf("logouts counted %d unknown (%+v): want the held command, once", unknown, results)
			}
			waitFor(t, func() bool { return s.ConnRecovery().Running == 0 })
		})
	}
}

// TestERL2LogoutDuringConnRecovery: a logout of the session while an ERL 2
// connection recovery holds a lost connection's command (its reason-2
// Logout Request unanswered) logs the session out at once, ends the held
// command with its outcome unknown, counts it, and stops the recovery: no
// wait for the recovery's own bound (Time2Wait + Time2Retain, 20 s here).
func TestERL2LogoutDuringConnRecovery(t *testing.T) {
	ctx := interopCtx(t)
	s, errc := holdLostRead(t, ctx, 2)
	start := time.Now()
	res, err := s.Logout(ctx, LogoutOptions{Timeout: 2 * time.Second})
	took := time.Since(start)
	if err != nil || !res.OK() {
		t.Fatalf("logout during the recovery: %+v, %v", res, err)
	}
	select {
	case err = <-errc:
	case <-time.After(5 * time.Second):
		t.Fatal("the held command did not end with the logout")
	}
	if !errors.Is(err, ErrOutcomeUnknown) {
		t.Errorf("held command: %v, want its outcome unknown", err)
	}
	if res.Unknown != 1 {
		t.Errorf("logout counts %+v: want the held command counted unknown", res)
	}
	waitFor(t, func() bool { return s.ConnRecovery().Running == 0 })
	if took > 3*time.Second {
		t.Errorf("the logout took %v", took)
	}
	t.Logf("logout %v, held command: %v, recovery %+v", took, err, s.ConnRecovery())
}

// TestERL2SubmitConnEndsAsPicked: a Session.Submit call whose connection
// ends between the pick and the call's registration never went out; at
// ERL 2 it goes on another connection rather than failing with ErrNotSent
// (CI caught the failure under load in TestERL2ConnLossMovesSubmitCalls:
// "command not sent: the connection has ended"). With recovery on, the
// call waits for what follows the end (retryCall), which this checks too.
func TestERL2SubmitConnEndsAsPicked(t *testing.T) {
	for _, rc := range []*RecoveryConfig{nil, {ReplacementTimeout: 10 * time.Second}} {
		t.Run(fmt.Sprintf("recovery=%v", rc != nil), func(t *testing.T) {
			_, s := erl2Session(t, iscsitest.Config{}, 2, rc)
			var victim *Conn
			submitPickedHook = func(c *Conn) {
				if victim == nil {
					victim = c
					c.fail(fmt.Errorf("test: the connection is lost as the call is submitted: %w", ErrConnReset))
				}
			}
			t.Cleanup(func() { submitPickedHook = nil })
			done := make(chan error, 1)
			buf := make([]byte, 4096)
			call := &Call{Cmd: Command{CDB: read10(0, 8), Read: buf}, Done: func(c *Call) { done <- c.Err }}
			if err := s.Submit(call); err != nil {
				t.Fatalf("Submit: %v", err)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("the call: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the call did not end")
			}
			if victim == nil || victim.Err() == nil {
				t.Fatalf("the picked connection %v did not end", victim)
			}
		})
	}
}
