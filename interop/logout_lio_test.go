package interop

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/initiator"
	"github.com/goiscsi/iscsi/internal/peers"
	"github.com/goiscsi/iscsi/internal/testutil"
	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
)

// The VM of TestLIOLogout: one 64 MiB LUN, MC/S allowed.
const (
	ladderLUNMB = 64
	ladderMCS   = 4
)

// TestLIOLogout runs issue 15's tests of the logout engine against LIO, on a
// VM of its own (a LUN large enough for heavy reads): the escalation ladder
// when a connection's Logout Request gets no answer, and the abort policy
// with reads in flight.
func TestLIOLogout(t *testing.T) {
	t.Parallel()
	l := peers.StartLIO(t, peers.LIOOptions{LUNs: 1, LUNSizeMB: ladderLUNMB, MaxConnections: ladderMCS})
	t.Run("Ladder", func(t *testing.T) { testLadderSilent(t, l) })
	t.Run("Abort/Reads", func(t *testing.T) { testAbortInFlight(t, l, false, 16, 1<<20) })
	t.Run("Abort/Writes", func(t *testing.T) { testAbortInFlight(t, l, true, 16, 1<<20) })
	waitLIOSessionsFor(t, l, "", 0, 30*time.Second)
}

// connLog is what a PDUConn saw of the Logout Requests on one connection.
type connLog struct {
	pc                *testutil.PDUConn
	swallowed, passed []pdu.LogoutReason
}

// testLadderSilent: PerSession on a session of three connections whose
// reason-0 Logout Requests never reach LIO (the PDUConn swallows them: a
// target that does not answer). The ladder must spend its response timeout
// on the first connection, close it, then send reason 1 on each of the two
// others, and record every step; LIO's own session list ends empty.
func testLadderSilent(t *testing.T, l *peers.LIO) {
	const (
		nconn   = 3
		timeout = 2 * time.Second
	)
	ctx := testCtx(t)
	name := initiatorName(t)
	var mu sync.Mutex
	var logs []*connLog
	in, err := initiator.New(initiator.Config{Name: name, WrapConn: func(nc net.Conn) net.Conn {
		cl := &connLog{pc: testutil.NewPDUConn(nc)}
		cl.pc.Drop = func(bhs []byte) bool {
			return testutil.Opcode(bhs) == pdu.OpLogoutRequest && testutil.LogoutReason(bhs) == pdu.LogoutCloseSession
		}
		cl.pc.OnPDU = func(bhs []byte, dropped bool) {
			if testutil.Opcode(bhs) != pdu.OpLogoutRequest {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if dropped {
				cl.swallowed = append(cl.swallowed, testutil.LogoutReason(bhs))
			} else {
				cl.passed = append(cl.passed, testutil.LogoutReason(bhs))
			}
		}
		mu.Lock()
		logs = append(logs, cl)
		mu.Unlock()
		return cl.pc
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	s, err := in.Login(ctx, l.Addr, l.IQN, initiator.LoginOptions{Connections: nconn})
	if err != nil {
		t.Fatalf("login with %d connections: %v", nconn, err)
	}
	if p := s.Params(); p.HeaderDigest || p.DataDigest || len(s.Conns()) != nconn {
		t.Fatalf("digests %v/%v, %d connections: want none and %d", p.HeaderDigest, p.DataDigest, len(s.Conns()), nconn)
	}
	if err := s.TestUnitReady(ctx, 0); err != nil {
		t.Fatal(err)
	}
	waitLIOSessions(t, l, name, 1)

	opts := logout.Options{Strategy: logout.PerSession, Timeout: timeout, Deadline: 15 * time.Second}
	op, err := in.LogoutFromTargetWith(l.IQN, opts)
	if err != nil {
		t.Fatal(err)
	}
	r, err := op.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Sessions) != 1 || len(r.Sessions[0].Conns) != nconn {
		t.Fatalf("%d sessions in the result, want 1 of %d connections: %+v", len(r.Sessions), nconn, r.Sessions)
	}
	sr := r.Sessions[0]
	for _, c := range sr.Conns {
		t.Logf("CID %d: %s, reason %d", c.CID, c.Detail(), c.Reason)
		for k, st := range c.Steps {
			t.Logf("  step %d: %s reason %d: %s (at %v, took %v)", k+1, st.Kind, st.Reason, st.Detail(),
				st.At.Round(time.Millisecond), st.Duration.Round(time.Millisecond))
		}
	}
	t.Logf("outcome %v (0x%08x) in %v of a deadline of %v", r.Outcome, r.HRESULT(), r.Duration.Round(time.Millisecond), r.Deadline)

	// Step 1: reason 0 on the first connection, unanswered within the
	// response timeout; step 2: that connection closed.
	first := sr.Conns[0]
	if len(first.Steps) != 2 {
		t.Fatalf("CID %d: %d steps, want reason 0 unanswered then TCP close", first.CID, len(first.Steps))
	}
	st0, st1 := first.Steps[0], first.Steps[1]
	if st0.Kind != logout.StepLogout || st0.Reason != pdu.LogoutCloseSession || st0.State != logout.ConnTimeout ||
		st0.Responded || st0.Duration < timeout || st0.Duration > timeout+time.Second {
		t.Errorf("CID %d step 1: %+v, want reason 0 with no response after the %v timeout", first.CID, st0, timeout)
	}
	if st1.Kind != logout.StepClose || st1.State != logout.ConnClosed || st1.At < st0.At+st0.Duration {
		t.Errorf("CID %d step 2: %+v, want the TCP close after step 1", first.CID, st1)
	}
	// Then reason 1 on each other connection, after the first's close.
	for _, c := range sr.Conns[1:] {
		if len(c.Steps) == 0 {
			t.Errorf("CID %d: no step", c.CID)
			continue
		}
		st := c.Steps[0]
		if st.Kind != logout.StepLogout || st.Reason != pdu.LogoutCloseConnection || st.At < st1.At {
			t.Errorf("CID %d step 1: %+v, want reason 1 after CID %d was closed", c.CID, st, first.CID)
		}
		if c.State == logout.ConnLoggedOut {
			if len(c.Steps) != 1 || !c.Responded || c.Response != pdu.LogoutSuccess {
				t.Errorf("CID %d logged out: %+v", c.CID, c)
			}
		} else if last := c.Steps[len(c.Steps)-1]; len(c.Steps) != 2 || last.Kind != logout.StepClose {
			t.Errorf("CID %d did not log out (%s) and was not closed: steps %+v", c.CID, c.Detail(), c.Steps)
		}
	}
	// The session is not reported logged out, by design: its first
	// connection went without an answer (the in-memory target's
	// TestLadderSilenceThenReason1Mem says the same), though LIO, as the
	// last connection logs out with reason 1, frees it.
	if r.Outcome != logout.Failed || sr.LoggedOut || r.HRESULT() != logout.HResultLogoutFailed {
		t.Errorf("outcome %v (0x%08x), session logged out %v: want failed, not logged out", r.Outcome, r.HRESULT(), sr.LoggedOut)
	}
	if r.Duration > r.Deadline+time.Second {
		t.Errorf("took %v, past the deadline %v", r.Duration, r.Deadline)
	}
	// On the wire: one reason 0 swallowed, on the first connection; one
	// reason 1 sent on each of the others; nothing else.
	mu.Lock()
	if len(logs) != nconn {
		t.Errorf("%d connections wrapped, want %d", len(logs), nconn)
	}
	swallowed, passed := 0, 0
	for _, cl := range logs {
		swallowed += len(cl.swallowed)
		passed += len(cl.passed)
		for _, reason := range cl.passed {
			if reason != pdu.LogoutCloseConnection {
				t.Errorf("a Logout Request with reason %d reached LIO", reason)
			}
		}
	}
	mu.Unlock()
	if swallowed != 1 || passed != nconn-1 {
		t.Errorf("%d Logout Requests swallowed and %d sent, want 1 and %d", swallowed, passed, nconn-1)
	}
	if got := in.Sessions(l.IQN); len(got) != 0 {
		t.Errorf("%d sessions still in the initiator's table", len(got))
	}
	// LIO's own view: the session is gone.
	waitLIOSessions(t, l, name, 0)
}

// testAbortInFlight: the abort policy with k commands of size bytes in
// flight on LIO: reads, or writes past FirstBurstLength that wait for an
// R2T. The initiator's reads of the connection are held from before the
// commands go out until ABORT TASK SET is on the wire, so none completes
// before the logout begins (and no R2T is answered): exactly k commands are
// in flight, and the result must count k, each as its command ended (nil:
// completed; ErrAborted: aborted; any other error: outcome unknown).
func testAbortInFlight(t *testing.T, l *peers.LIO, write bool, k, size int) {
	ctx := testCtx(t)
	name := initiatorName(t)
	var (
		armed   atomic.Bool
		sent    atomic.Int32
		allSent = make(chan struct{})
		tmf     = make(chan struct{})
		tmfOnce sync.Once
		pc      *testutil.PDUConn
	)
	in, err := initiator.New(initiator.Config{Name: name, WrapConn: func(nc net.Conn) net.Conn {
		pc = testutil.NewPDUConn(nc)
		pc.OnPDU = func(bhs []byte, _ bool) {
			if !armed.Load() {
				return
			}
			switch testutil.Opcode(bhs) {
			case pdu.OpSCSICommand:
				if sent.Add(1) == int32(k) {
					close(allSent)
				}
			case pdu.OpTaskMgmtRequest:
				tmfOnce.Do(func() { close(tmf) })
			}
		}
		return pc
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	s, err := in.Login(ctx, l.Addr, l.IQN, initiator.LoginOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p := s.Params(); p.HeaderDigest || p.DataDigest {
		t.Fatalf("digests negotiated (%v, %v): the PDU splitter needs none", p.HeaderDigest, p.DataDigest)
	}
	if err := s.TestUnitReady(ctx, 0); err != nil {
		t.Fatal(err)
	}
	waitLIOSessions(t, l, name, 1)
	// What LIO answers to ABORT TASK SET, asked once with nothing running:
	// the abort policy can abort nothing unless it is "function complete".
	tsResp, err := s.TaskManagement(ctx, pdu.TMFAbortTaskSet, 0, 0)
	if err != nil {
		t.Fatalf("ABORT TASK SET with nothing running: %v", err)
	}
	t.Logf("LIO answers ABORT TASK SET with %q (%d)", tsResp, tsResp)

	release := pc.Hold(time.Minute)
	defer release()
	armed.Store(true)
	errs := make([]error, k)
	var wg sync.WaitGroup
	var returned atomic.Int32
	for i := range k {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := &session.Command{LUN: 0, CDB: testutil.RW16(0x88, uint64(i*size/blockSize), size, blockSize), Read: make([]byte, size)}
			if write {
				cmd = &session.Command{LUN: 0, CDB: testutil.RW16(0x8a, uint64(i*size/blockSize), size, blockSize), Write: testutil.Random(uint64(i), size)}
			}
			_, errs[i] = s.Execute(ctx, cmd)
			returned.Add(1)
		}()
	}
	testutil.Recv(t, testutil.Go(func() struct{} { <-allSent; return struct{}{} }), 30*time.Second, "the commands on the wire")
	if n := returned.Load(); n != 0 {
		t.Fatalf("%d commands returned while the connection's reads were held", n)
	}
	start := time.Now()
	op, err := in.LogoutFromTargetWith(l.IQN, logout.Options{InFlight: session.InFlightAbort,
		AbortTimeout: 20 * time.Second, Timeout: 15 * time.Second, Deadline: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-tmf:
	case <-op.Done():
		t.Fatal("the logout ended without sending ABORT TASK SET")
	case <-ctx.Done():
		t.Fatal("no ABORT TASK SET on the wire")
	}
	release()
	r, err := op.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	var want logout.Commands
	for i, err := range errs {
		switch {
		case err == nil:
			want.Completed++
		case errors.Is(err, session.ErrAborted):
			want.Aborted++
		case errors.Is(err, session.ErrOutcomeUnknown):
			want.Unknown++
		default:
			t.Errorf("command %d: %v, neither completed, aborted nor outcome unknown", i, err)
		}
	}
	t.Logf("%d commands of %d KiB in flight (write %v), logged out (abort) in %v: %+v", k, size>>10, write, time.Since(start).Round(time.Millisecond), r.Commands)
	if r.Outcome != logout.Success || len(r.Sessions) != 1 || len(r.Sessions[0].Conns) != 1 {
		t.Fatalf("outcome %v, %d sessions", r.Outcome, len(r.Sessions))
	}
	c := r.Sessions[0].Conns[0]
	if r.Commands.Total() != k || r.Commands != want || r.Sessions[0].Commands != want || c.Commands != want {
		t.Fatalf("counts %+v (session %+v, connection %+v), want %+v: the %d commands in flight, each as it ended",
			r.Commands, r.Sessions[0].Commands, c.Commands, want, k)
	}
	// A target that confirms ABORT TASK SET leaves none unknown: each
	// command was aborted, or completed before the abort. LIO refuses it
	// ("function not supported"): the initiator then sends ABORT TASK for
	// each command still running, which LIO confirms, so none is left
	// unknown either.
	if want.Unknown != 0 || want.Aborted == 0 && want.Completed != k {
		t.Fatalf("abort policy (ABORT TASK SET: %q): %+v of %d", tsResp, want, k)
	}
	if len(c.Steps) != 1 || c.Steps[0].Kind != logout.StepLogout || c.Steps[0].State != logout.ConnLoggedOut ||
		c.Steps[0].Commands != want || c.FailedCommands != want.Unknown {
		t.Fatalf("steps %+v, failed %d", c.Steps, c.FailedCommands)
	}
	waitLIOSessions(t, l, name, 0)
}
