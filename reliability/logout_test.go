package reliability

// Fault matrix, logout rows (docs/RELIABILITY.md): LogoutFromTarget against
// the in-memory target, and the wire-level ones against the pipe fake.

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/initiator"
	"github.com/goiscsi/iscsi/internal/faketarget"
	"github.com/goiscsi/iscsi/internal/testutil"
	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
)

// logoutOne logs one session of one connection in to a target with hook and
// logs out of the target; it returns the result and that connection's.
func logoutOne(t *testing.T, hook iscsitest.Hook, opts logout.Options) (*memEnv, logout.Result, logout.ConnResult) {
	t.Helper()
	e := newMem(t, hook, nil, initiator.Config{})
	e.login(t, 1, 1)
	r := e.logout(t, opts)
	if len(r.Sessions) != 1 || len(r.Sessions[0].Conns) != 1 {
		t.Fatalf("result %+v, want one session of one connection", r)
	}
	return e, r, r.Sessions[0].Conns[0]
}

// failed checks an outcome of Failed with its HRESULT, a session that did
// not log out, and the target still holding it.
func failed(t *testing.T, e *memEnv, r logout.Result, want logout.ConnState) {
	t.Helper()
	c := r.Sessions[0].Conns[0]
	if r.Outcome != logout.Failed || r.HRESULT() != 0x80042709 || r.Sessions[0].LoggedOut {
		t.Fatalf("outcome %v (0x%08x), connection %s: want failed", r.Outcome, r.HRESULT(), c.Detail())
	}
	if c.State != want {
		t.Fatalf("connection %s (%v), want %v", c.Detail(), c.State, want)
	}
	if e.targetSession(t, isid(0)).LoggedOut {
		t.Error("the target says the session logged out")
	}
}

func testRefused(t *testing.T, code pdu.LogoutResponseCode) {
	e, r, c := logoutOne(t, iscsitest.FailLogout(nil, code, 2, 20), logout.Options{})
	failed(t, e, r, logout.ConnRefused)
	var lre *session.LogoutResponseError
	if !c.Responded || c.Response != code || c.Time2Wait != 2 || c.Time2Retain != 20 || !errors.As(c.Err, &lre) {
		t.Errorf("connection %+v, want response %d, Time2Wait 2, Time2Retain 20", c, code)
	}
}

// Logout response 1 (CID not found) → refused, outcome Failed.
func TestFaultLogoutResponse1(t *testing.T) { testRefused(t, pdu.LogoutCIDNotFound) }

// Logout response 2 (recovery not supported) → refused, outcome Failed.
func TestFaultLogoutResponse2(t *testing.T) { testRefused(t, pdu.LogoutRecoveryUnsupported) }

// Logout response 3 (cleanup failed) → refused with Time2Wait and
// Time2Retain, outcome Failed.
func TestFaultLogoutResponse3(t *testing.T) { testRefused(t, pdu.LogoutCleanupFailed) }

// No Logout Response, connection open → timeout at the deadline, the
// connection closed, outcome Failed.
func TestFaultLogoutNoResponse(t *testing.T) {
	e, r, c := logoutOne(t, iscsitest.NoLogoutResponse(nil), logout.Options{Timeout: 300 * time.Millisecond})
	failed(t, e, r, logout.ConnTimeout)
	if !errors.Is(c.Err, session.ErrLogoutTimeout) || c.Duration < 300*time.Millisecond || r.Duration > 5*time.Second {
		t.Errorf("connection %s after %v (operation %v)", c.Detail(), c.Duration, r.Duration)
	}
}

// TCP RST instead of a Logout Response → reset, outcome Failed.
func TestFaultLogoutTCPReset(t *testing.T) {
	e, r, c := logoutOne(t, iscsitest.ResetOnLogout(nil), logout.Options{})
	failed(t, e, r, logout.ConnReset)
	if !errors.Is(c.Err, session.ErrConnReset) {
		t.Errorf("error %v, want session.ErrConnReset", c.Err)
	}
}

// TCP FIN instead of a Logout Response → reset (closed without an answer),
// outcome Failed.
func TestFaultLogoutTCPFIN(t *testing.T) {
	e, r, c := logoutOne(t, iscsitest.CloseOnLogout(nil), logout.Options{})
	failed(t, e, r, logout.ConnReset)
	if !errors.Is(c.Err, session.ErrConnReset) {
		t.Errorf("error %v, want session.ErrConnReset", c.Err)
	}
}

// A Reject of the Logout Request → rejected, outcome Failed.
func TestFaultLogoutRejected(t *testing.T) {
	e, r, c := logoutOne(t, iscsitest.RejectLogout(nil, pdu.RejectInvalidPDUField), logout.Options{})
	failed(t, e, r, logout.ConnRejected)
	var rj *session.RejectError
	if !errors.As(c.Err, &rj) || rj.Reason != pdu.RejectInvalidPDUField || rj.Op != pdu.OpLogoutRequest {
		t.Errorf("error %v, want a RejectError of the Logout Request", c.Err)
	}
}

// A Reject "immediate command" (0x06) of the Logout Request → sent again in
// CmdSN order, logged out.
func TestFaultLogoutRejectedImmediate(t *testing.T) {
	e, r, c := logoutOne(t, iscsitest.Once(iscsitest.RejectLogout(nil, pdu.RejectImmediateCommand)), logout.Options{})
	if r.Outcome != logout.Success || c.State != logout.ConnLoggedOut {
		t.Fatalf("outcome %v, connection %s: want success", r.Outcome, c.Detail())
	}
	if !e.targetSession(t, isid(0)).LoggedOut {
		t.Error("the target does not list the session as logged out")
	}
}

// A Logout Response with a tag no request has → *pdu.ProtocolError, the
// connection dropped, outcome Failed.
func TestFaultLogoutResponseUnknownITT(t *testing.T) {
	e, r, c := logoutOne(t, iscsitest.OnLogout(nil, iscsitest.Respond(&pdu.LogoutResponse{ITT: 0xdeadbeef}, nil)), logout.Options{})
	failed(t, e, r, logout.ConnError)
	faketarget.AsProtocolError(t, c.Err, pdu.OpLogoutResponse, "InitiatorTaskTag")
}

// A Logout Response carrying a data segment → *pdu.ProtocolError
// (DataSegmentLength), outcome Failed.
func TestFaultLogoutResponseWithData(t *testing.T) {
	hook := func(ev *iscsitest.Event) iscsitest.Action {
		lr, ok := ev.PDU.(*pdu.LogoutRequest)
		if !ok {
			return iscsitest.Continue
		}
		var h pdu.BHS
		(&pdu.LogoutResponse{ITT: lr.ITT, SeqNums: pdu.SeqNums{StatSN: lr.ExpStatSN, ExpCmdSN: lr.CmdSN, MaxCmdSN: lr.CmdSN + 8}}).MarshalBHS(&h)
		h.SetLengths(0, 4)
		ev.Conn.SendRaw(&h, nil, []byte{1, 2, 3, 4})
		return iscsitest.Drop
	}
	e, r, c := logoutOne(t, hook, logout.Options{})
	failed(t, e, r, logout.ConnError)
	faketarget.AsProtocolError(t, c.Err, pdu.OpLogoutResponse, "DataSegmentLength")
}

// Reason 0 on one of four sessions refused (response 3) → outcome
// Incomplete; the three others logged out and left the table, the refused
// one stays.
func TestFaultLogoutOneOfFour(t *testing.T) {
	e := newMem(t, iscsitest.FailLogout(iscsitest.SessionISID(isid(2)), pdu.LogoutCleanupFailed, 2, 20), nil, initiator.Config{})
	e.login(t, 4, 1)
	r := e.logout(t, logout.Options{})
	if r.Outcome != logout.Incomplete || r.HRESULT() != 0x80042710 || r.LoggedOut() != 3 {
		t.Fatalf("outcome %v (0x%08x), %d logged out: want incomplete, 3", r.Outcome, r.HRESULT(), r.LoggedOut())
	}
	for i := 0; i < 4; i++ {
		if got := e.targetSession(t, isid(i)).LoggedOut; got != (i != 2) {
			t.Errorf("session %d logged out at the target: %v", i, got)
		}
	}
}

// No response and Force → the session is closed locally and says so
// (Forced), leaves the table; outcome Failed.
func TestFaultLogoutForceNoResponse(t *testing.T) {
	e, r, _ := logoutOne(t, iscsitest.NoLogoutResponse(nil), logout.Options{Timeout: 200 * time.Millisecond, Force: true})
	failed(t, e, r, logout.ConnTimeout)
	if !r.Sessions[0].Forced {
		t.Error("Forced not set")
	}
	if n := len(e.in.Sessions(memIQN)); n != 0 {
		t.Errorf("%d sessions left in the table after Force", n)
	}
}

// No response and Cancel → every connection still waiting is closed and
// reported canceled, at once.
func TestFaultLogoutCancel(t *testing.T) {
	logouts := make(chan *iscsitest.Event, 8)
	e := newMem(t, iscsitest.Chain(observe(isLogout, logouts), iscsitest.NoLogoutResponse(nil)), nil, initiator.Config{})
	e.login(t, 2, 1)
	op, err := e.in.LogoutFromTargetWith(memIQN, logout.Options{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Recv(t, logouts, wait, "Logout Request")
	testutil.Recv(t, logouts, wait, "Logout Request")
	start := time.Now()
	op.Cancel()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	r, err := op.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Wait returned %v after Cancel", d)
	}
	if r.Outcome != logout.Canceled || r.HRESULT() != logout.HResultOperationCanceled || r.LoggedOut() != 0 {
		t.Errorf("outcome %v 0x%08x, %d logged out; want canceled (issue 15), none", r.Outcome, r.HRESULT(), r.LoggedOut())
	}
	for _, s := range r.Sessions {
		if c := s.Conns[0]; c.State != logout.ConnCanceled || !errors.Is(c.Err, context.Canceled) {
			t.Errorf("session %#x: %s", s.TSIH, c.Detail())
		}
	}
}

// A header digest mismatch on the Logout Response → *pdu.DigestError, the
// logout failed, the connection closed.
func TestFaultLogoutHeaderDigestMismatch(t *testing.T) {
	s, f := fakeSession(t, digestConfig(), faketarget.Login{Digests: true})
	ch := make(chan session.LogoutResult, 1)
	go func() {
		ch <- s.Conns()[0].Logout(context.Background(), session.LogoutOptions{Reason: pdu.LogoutCloseSession, Timeout: wait})
	}()
	x := f.Expect(pdu.OpLogoutRequest)
	b := f.Wire(&pdu.LogoutResponse{ITT: x.PDU.(*pdu.LogoutRequest).ITT, SeqNums: f.Seq(true)}, nil)
	b[pdu.BHSLen+2] ^= 0x10
	f.SendRaw(b)
	res := testutil.Recv(t, ch, wait, "logout")
	var de *pdu.DigestError
	if res.OK() || res.Responded || !errors.As(res.Err, &de) {
		t.Fatalf("logout %+v, want a DigestError", res)
	}
	f.ExpectClosed()
	if s.LoggedOut() {
		t.Error("session says it logged out")
	}
}

// Data-In (for a command the logout failed) after the Logout Response →
// discarded; the logout succeeds.
func TestFaultDataInAfterLogoutResponse(t *testing.T) {
	s, f := fakeSession(t, testConfig(), faketarget.Login{})
	read := goExecute(context.Background(), s, readCmd(512))
	cmd := f.Expect(pdu.OpSCSICommand).PDU.(*pdu.SCSICommand)
	ch := make(chan session.LogoutResult, 1)
	go func() {
		ch <- s.Conns()[0].Logout(context.Background(), session.LogoutOptions{Reason: pdu.LogoutCloseSession, Timeout: wait})
	}()
	x := f.Expect(pdu.OpLogoutRequest)
	f.MustSend(&pdu.LogoutResponse{ITT: x.PDU.(*pdu.LogoutRequest).ITT, SeqNums: f.Seq(true)}, nil)
	f.Send(&pdu.DataIn{Final: true, HasStatus: true, ITT: cmd.ITT, TTT: 0xffffffff, SeqNums: f.Seq(true)}, make([]byte, 512))
	f.Close()
	res := testutil.Recv(t, ch, wait, "logout")
	if !res.OK() || res.Failed != 1 || !s.LoggedOut() {
		t.Fatalf("logout %+v (logged out %v), want success with 1 command failed", res, s.LoggedOut())
	}
	if r := waitExec(t, read); r.err == nil {
		t.Fatal("the read the logout failed reported done")
	}
}

// An R2T that crossed the Logout Request → no Data-Out follows the request;
// the write fails, never reported done; the logout ends within its deadline.
func TestFaultR2TAfterLogoutRequest(t *testing.T) {
	cfg := testConfig()
	p := session.DefaultParams()
	p.InitialR2T, p.ImmediateData = true, false
	cfg.Params = &p
	s, f := fakeSession(t, cfg, faketarget.Login{})
	write := goExecute(context.Background(), s, writeCmd(pattern(4096, 3)))
	cmd := f.Expect(pdu.OpSCSICommand).PDU.(*pdu.SCSICommand)
	ch := make(chan session.LogoutResult, 1)
	go func() {
		ch <- s.Conns()[0].Logout(context.Background(), session.LogoutOptions{Reason: pdu.LogoutCloseSession, Timeout: 2 * time.Second})
	}()
	x := f.Expect(pdu.OpLogoutRequest)
	f.Send(&pdu.R2T{ITT: cmd.ITT, TTT: 1, SeqNums: f.Seq(false), DesiredDataTransferLength: 4096}, nil)
	f.Send(&pdu.LogoutResponse{ITT: x.PDU.(*pdu.LogoutRequest).ITT, SeqNums: f.Seq(true)}, nil)
	f.ExpectClosed() // and no Data-Out before
	testutil.Recv(t, ch, wait, "logout")
	if r := waitExec(t, write); r.err == nil {
		t.Fatal("a write without status reported done")
	}
}

// A Logout Response that crosses the logout's cancel (or its deadline) →
// not a protocol error: the commands still running end saying their outcome
// is unknown, and the logout reports the cancel or the response, whichever
// it saw first.
func TestFaultLogoutResponseCrossingCancel(t *testing.T) {
	for i := 0; i < 200 && !t.Failed(); i++ {
		s, f := fakeSession(t, testConfig(), faketarget.Login{})
		read := goExecute(context.Background(), s, readCmd(512))
		f.Expect(pdu.OpSCSICommand)
		ctx, cancel := context.WithCancel(context.Background())
		ch := make(chan session.LogoutResult, 1)
		go func() {
			ch <- s.Conns()[0].Logout(ctx, session.LogoutOptions{Reason: pdu.LogoutCloseSession, Timeout: wait})
		}()
		x := f.Expect(pdu.OpLogoutRequest)
		resp := &pdu.LogoutResponse{ITT: x.PDU.(*pdu.LogoutRequest).ITT, SeqNums: f.Seq(true)}
		go cancel()
		f.Send(resp, nil)
		res := testutil.Recv(t, ch, wait, "logout")
		if !res.OK() && !errors.Is(res.Err, context.Canceled) {
			t.Fatalf("round %d: logout %+v, want success or canceled", i, res)
		}
		r := waitExec(t, read)
		var pe *pdu.ProtocolError
		if r.err == nil || errors.As(r.err, &pe) || !strings.Contains(r.err.Error(), "unknown") {
			t.Fatalf("round %d: the running read: %v, want its outcome unknown", i, r.err)
		}
		f.Close()
		s.Close()
	}
}
