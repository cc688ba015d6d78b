package initiator

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
)

func waitOp(t *testing.T) func(op *logout.Operation, err error) logout.Result {
	return func(op *logout.Operation, err error) logout.Result {
		t.Helper()
		return waitOpErr(t, op, err)
	}
}

func waitOpErr(t *testing.T, op *logout.Operation, err error) logout.Result {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := op.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// Part 3 on the in-memory target: reason 0 refused with Time2Wait 1 s on
// CID 0 (cleanup failed); after 1 s reason 0 goes again on CID 1 and the
// session logs out. CID 0 was closed after its refusal.
func TestLadderRefusalTime2WaitMem(t *testing.T) {
	tg, in := memSetup(t, 1, 2, iscsitest.FailLogout(iscsitest.ConnCID(0), pdu.LogoutCleanupFailed, 1, 0), Config{})
	start := time.Now()
	r := logoutWait(t, in, logout.Options{Strategy: logout.PerSession, Deadline: 5 * time.Second})
	if took := time.Since(start); took < time.Second || took > 4*time.Second {
		t.Fatalf("took %v, want Time2Wait (1 s) and a little", took)
	}
	if r.Outcome != logout.Success || r.Deadline != 5*time.Second {
		t.Fatalf("outcome %v deadline %v", r.Outcome, r.Deadline)
	}
	c := r.Sessions[0].Conns
	if c[0].State != logout.ConnRefused || c[0].Time2Wait != 1 || len(c[0].Steps) != 2 || c[0].Steps[1].Kind != logout.StepClose {
		t.Fatalf("CID 0: %s, steps %+v", c[0].Detail(), c[0].Steps)
	}
	if c[1].State != logout.ConnLoggedOut || c[1].Reason != pdu.LogoutCloseSession || c[1].Steps[0].Waited != time.Second {
		t.Fatalf("CID 1: %s, steps %+v", c[1].Detail(), c[1].Steps)
	}
	if n := liveAtTarget(tg); n != 0 {
		t.Fatalf("target still has %d live sessions", n)
	}
}

// Silence on reason 0: after the response timeout, reason 1 on the other
// connection, which logs out; the silent one is closed. The session is not
// reported logged out (its first connection went without an answer).
func TestLadderSilenceThenReason1Mem(t *testing.T) {
	_, in := memSetup(t, 1, 2, iscsitest.NoLogoutResponse(iscsitest.LogoutReason(pdu.LogoutCloseSession)), Config{})
	r := logoutWait(t, in, logout.Options{Strategy: logout.PerSession, Timeout: 300 * time.Millisecond, Deadline: 3 * time.Second})
	c := r.Sessions[0].Conns
	if c[0].State != logout.ConnTimeout || !errors.Is(c[0].Err, session.ErrLogoutTimeout) || len(c[0].Steps) != 2 {
		t.Fatalf("CID 0: %s, steps %+v", c[0].Detail(), c[0].Steps)
	}
	if c[1].State != logout.ConnLoggedOut || c[1].Reason != pdu.LogoutCloseConnection || c[1].Steps[0].At < 300*time.Millisecond {
		t.Fatalf("CID 1: %s, steps %+v", c[1].Detail(), c[1].Steps)
	}
	if r.Outcome != logout.Failed || r.Sessions[0].LoggedOut {
		t.Fatalf("outcome %v", r.Outcome)
	}
}

// A reset on reason 0 is unanswered too: reason 1 on the others.
func TestLadderResetThenReason1Mem(t *testing.T) {
	_, in := memSetup(t, 1, 3, iscsitest.ResetOnLogout(iscsitest.LogoutReason(pdu.LogoutCloseSession)), Config{})
	r := logoutWait(t, in, logout.Options{Strategy: logout.PerSession})
	c := r.Sessions[0].Conns
	if c[0].State != logout.ConnReset || c[1].State != logout.ConnLoggedOut || c[2].State != logout.ConnLoggedOut ||
		c[1].Reason != pdu.LogoutCloseConnection || c[2].Reason != pdu.LogoutCloseConnection {
		t.Fatalf("%s / %s / %s", c[0].Detail(), c[1].Detail(), c[2].Detail())
	}
}

// Part 6: one session by TSIH, one connection by CID, through the
// initiator; a TSIH not in the table is "session not found", which
// LoggedOutOrGone counts as done.
func TestLogoutSessionAndConnection(t *testing.T) {
	tg, in := memSetup(t, 2, 2, nil, Config{})
	ss := in.Sessions(memTarget)
	a, b := ss[0], ss[1]
	r := waitOp(t)(in.LogoutConnection(memTarget, a.TSIH(), 1, logout.Options{}))
	if r.Outcome != logout.Success || len(r.Sessions) != 1 || len(r.Sessions[0].Conns) != 1 {
		t.Fatalf("connection logout: %v %+v", r.Outcome, r.Sessions)
	}
	if c := r.Sessions[0].Conns[0]; c.CID != 1 || c.Reason != pdu.LogoutCloseConnection || c.State != logout.ConnLoggedOut {
		t.Fatalf("connection: %+v", c)
	}
	if n := len(a.Conns()); n != 1 || len(in.Sessions(memTarget)) != 2 {
		t.Fatalf("session has %d connections, table %d sessions; want 1 and 2", n, len(in.Sessions(memTarget)))
	}
	r = waitOp(t)(in.LogoutSession(memTarget, b.TSIH(), logout.Options{}))
	if r.Outcome != logout.Success || len(r.Sessions) != 1 || r.Sessions[0].TSIH != b.TSIH() {
		t.Fatalf("session logout: %v %+v", r.Outcome, r.Sessions)
	}
	if got := in.Sessions(memTarget); len(got) != 1 || got[0] != a {
		t.Fatalf("table %v, want the other session only", got)
	}
	r = waitOp(t)(in.LogoutSession(memTarget, b.TSIH(), logout.Options{}))
	if r.Outcome != logout.SessionNotFound || !r.LoggedOutOrGone() || r.HRESULT() != logout.HResultSessionNotFound {
		t.Fatalf("second logout of the session: %v", r.Outcome)
	}
	if _, err := in.LogoutSession("not a name", 1, logout.Options{}); !errors.Is(err, ErrInvalidArg) {
		t.Fatalf("malformed name: %v", err)
	}
	r = waitOp(t)(in.LogoutFromTargetWith(memTarget, logout.Options{}))
	if r.Outcome != logout.Success || len(r.Sessions) != 1 {
		t.Fatalf("the rest: %v %+v", r.Outcome, r.Sessions)
	}
	if n := liveAtTarget(tg); n != 0 {
		t.Fatalf("target still has %d live sessions", n)
	}
}

// Part 6: a logout the target asked for reaches OnTargetLogout with the
// same detail as a caller's.
func TestOnTargetLogout(t *testing.T) {
	got := make(chan *logout.Result, 1)
	tg, in := memSetup(t, 1, 1, nil, Config{OnTargetLogout: func(r *logout.Result) { got <- r }, MaxAsyncLogoutWait: time.Second})
	s := in.Sessions(memTarget)[0]
	if err := tg.SendAsync(s.TSIH(), 0, pdu.AsyncMessage{AsyncEvent: pdu.AsyncLogoutRequest, Parameter3: 600}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-got:
		if !r.Requested || r.Parameter3 != 600 || r.Outcome != logout.Success || len(r.Sessions) != 1 || r.Sessions[0].TSIH != s.TSIH() {
			t.Fatalf("result %+v", r)
		}
		// Clamped to 1 s: 0.5 s of drain and the 15 s response wait.
		if r.Deadline != 500*time.Millisecond+session.DefaultLogoutTimeout {
			t.Fatalf("deadline %v", r.Deadline)
		}
		if c := r.Sessions[0].Conns[0]; c.State != logout.ConnLoggedOut || len(c.Steps) != 1 || c.Steps[0].Reason != pdu.LogoutCloseSession {
			t.Fatalf("connection %+v", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no result of the target's logout")
	}
	if n := len(in.Sessions(memTarget)); n != 0 {
		t.Fatalf("%d sessions in the table after the callback", n)
	}
}

// Part 5 through the initiator: the hook sees the *session.Session.
func TestInUseMem(t *testing.T) {
	_, in := memSetup(t, 2, 1, nil, Config{})
	busy := in.Sessions(memTarget)[0]
	r := logoutWait(t, in, logout.Options{InUse: func(si logout.SessionInfo) error {
		if si.Session == busy {
			return errors.New("mounted")
		}
		return nil
	}})
	if r.Outcome != logout.Incomplete || r.LoggedOut() != 1 {
		t.Fatalf("outcome %v, %d logged out", r.Outcome, r.LoggedOut())
	}
	if got := in.Sessions(memTarget); len(got) != 1 || got[0] != busy || len(busy.Conns()) != 1 {
		t.Fatal("the session in use did not stay, usable")
	}
}

// Part 4, exact counts under load: k commands the target holds are in
// flight when the logout begins; each policy ends all k one way. For drain
// the target (a slow disk) answers them 300 ms after the logout began,
// while it drains; for abort and fail it never answers them.
func TestInFlightCountsMem(t *testing.T) {
	const k = 6
	for _, tc := range []struct {
		policy session.InFlightPolicy
		want   logout.Commands
	}{
		{session.InFlightFail, logout.Commands{Unknown: k}},
		{session.InFlightAbort, logout.Commands{Aborted: k}},
		{session.InFlightDrain, logout.Commands{Completed: k}},
	} {
		t.Run(tc.policy.String(), func(t *testing.T) {
			type held struct {
				c   *iscsitest.Conn
				itt uint32
			}
			arrived := make(chan held, k)
			hook := iscsitest.When(iscsitest.OpcodeIs(pdu.OpSCSICommand), iscsitest.Drop)
			_, in := memSetup(t, 1, 1, func(ev *iscsitest.Event) iscsitest.Action {
				if ev.Header.Opcode() == pdu.OpSCSICommand {
					arrived <- held{ev.Conn, ev.PDU.(*pdu.SCSICommand).ITT}
				}
				return hook(ev)
			}, Config{})
			s := in.Sessions(memTarget)[0]
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			errs := make(chan error, k)
			for i := 0; i < k; i++ {
				go func() { errs <- s.TestUnitReady(ctx, 0) }()
			}
			var cmds []held
			for i := 0; i < k; i++ {
				select {
				case h := <-arrived:
					cmds = append(cmds, h)
				case <-ctx.Done():
					t.Fatal("the commands did not reach the target")
				}
			}
			op, err := in.LogoutFromTargetWith(memTarget, logout.Options{InFlight: tc.policy, DrainTimeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if tc.policy == session.InFlightDrain {
				answer := time.AfterFunc(300*time.Millisecond, func() {
					for _, h := range cmds {
						h.c.Send(&pdu.SCSIResponse{ITT: h.itt}, nil) // GOOD
					}
				})
				defer answer.Stop()
			}
			r := waitOpErr(t, op, nil)
			if r.Outcome != logout.Success || r.Commands != tc.want || r.Sessions[0].Commands != tc.want || r.Sessions[0].Conns[0].Commands != tc.want {
				t.Fatalf("outcome %v, counts %+v / %+v, want %+v", r.Outcome, r.Commands, r.Sessions[0].Conns[0].Commands, tc.want)
			}
			failed := 0
			for i := 0; i < k; i++ {
				if err := <-errs; err != nil {
					failed++
				}
			}
			if want := tc.want.Aborted + tc.want.Unknown; failed != want {
				t.Fatalf("%d commands failed, want %d", failed, want)
			}
		})
	}
}
