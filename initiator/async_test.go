package initiator

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/pdu"
)

// observeLogouts returns a hook that reports when each Logout Request
// arrives, then drops it (no response), and drops every SCSI Command (it
// never completes).
func observeLogouts(logouts chan<- time.Time, cmds chan<- struct{}) iscsitest.Hook {
	return func(ev *iscsitest.Event) iscsitest.Action {
		switch ev.Header.Opcode() {
		case pdu.OpLogoutRequest:
			select {
			case logouts <- time.Now():
			default:
			}
			return iscsitest.Drop
		case pdu.OpSCSICommand:
			select {
			case cmds <- struct{}{}:
			default:
			}
			return iscsitest.Drop
		}
		return iscsitest.Continue
	}
}

// Issue 12, finding 3: the target asks for a logout within 65535 s while a
// command it never completes runs. The session's logout drains half the
// clamped window (here 1 s), not 9 hours, then sends its Logout Request;
// a user's logout of the target meanwhile, with a 2 s timeout, ends by its
// own bound with an outcome that is not success, and sends no second
// request.
func TestAsyncLogoutClampedAndUserLogoutBounded(t *testing.T) {
	const clamp = time.Second
	logouts := make(chan time.Time, 4)
	cmds := make(chan struct{}, 4)
	tg, in := memSetup(t, 1, 1, observeLogouts(logouts, cmds), Config{MaxAsyncLogoutWait: clamp})
	s := in.Sessions(memTarget)[0]

	readCtx, cancelRead := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancelRead()
	read := make(chan error, 1)
	go func() { read <- s.Read(readCtx, 0, 0, 512, make([]byte, 512)) }()
	select {
	case <-cmds:
	case <-time.After(10 * time.Second):
		t.Fatal("the read never reached the target")
	}

	sent := time.Now()
	if err := tg.SendAsync(s.TSIH(), 0, pdu.AsyncMessage{AsyncEvent: pdu.AsyncLogoutRequest, Parameter3: 65535}, nil); err != nil {
		t.Fatal(err)
	}
	var arrived time.Time
	select {
	case arrived = <-logouts:
	case <-time.After(10 * time.Second):
		t.Fatal("no Logout Request within 10 s of a logout request for 65535 s: the window was not clamped")
	}
	if d := arrived.Sub(sent); d < clamp/2 || d > clamp+2*time.Second {
		t.Fatalf("Logout Request %v after the event; want after the drain (%v, half the clamp) and within the clamp %v + 2 s",
			d, clamp/2, clamp)
	}

	// The target's logout now waits for a response that never comes; the
	// user's call joins that connection's logout.
	start := time.Now()
	op, err := in.LogoutFromTargetWith(memTarget, logout.Options{Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := op.Wait(ctx)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("Wait: %v (after %v)", err, took)
	}
	if took > 5*time.Second {
		t.Errorf("user logout with a 2 s timeout took %v", took)
	}
	if r.Outcome == logout.Success || r.Err() == nil || len(r.Sessions) != 1 || r.Sessions[0].LoggedOut {
		t.Fatalf("user logout: outcome %v, sessions %+v; want no success while the logout has no answer", r.Outcome, r.Sessions)
	}
	c := r.Sessions[0].Conns[0]
	if c.State != logout.ConnTimeout || !errors.Is(c.Err, logout.ErrStillLoggingOut) {
		t.Fatalf("connection reported %v (%v), want timeout with ErrStillLoggingOut", c.State, c.Err)
	}
	if s.LoggedOut() {
		t.Fatal("the session counts as logged out with no Logout Response")
	}
	select {
	case at := <-logouts:
		t.Fatalf("a second Logout Request came %v after the first", at.Sub(arrived))
	default:
	}

	in.Close()
	select {
	case err := <-read:
		if err == nil {
			t.Fatal("the read the target never completed reported success")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the read did not end when the initiator closed")
	}
}

// A second call with a tighter timeout than the running logout's gets an
// operation of its own that ends at its bound, not success; a call with the
// same timeout shares the running operation itself. One Logout Request.
func TestJoinedCallBoundedByItsTimeout(t *testing.T) {
	logouts := make(chan time.Time, 4)
	_, in := memSetup(t, 1, 1, observeLogouts(logouts, make(chan struct{}, 1)), Config{})
	op1, err := in.LogoutFromTargetWith(memTarget, logout.Options{Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-logouts:
	case <-time.After(10 * time.Second):
		t.Fatal("no Logout Request")
	}
	if same, _ := in.LogoutFromTargetWith(memTarget, logout.Options{Timeout: 20 * time.Second}); same != op1 {
		t.Error("a call with the same timeout did not share the running operation")
	}
	start := time.Now()
	op2, err := in.LogoutFromTargetWith(memTarget, logout.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if op2 == op1 {
		t.Fatal("a call with a 1 s timeout got the 20 s operation")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := op2.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("call with a 1 s timeout took %v", took)
	}
	if r.Outcome != logout.Failed || r.Sessions[0].LoggedOut {
		t.Fatalf("joined call: outcome %v, logged out %v; want failed", r.Outcome, r.Sessions[0].LoggedOut)
	}
	if c := r.Sessions[0].Conns[0]; c.State != logout.ConnTimeout || !errors.Is(c.Err, logout.ErrStillLoggingOut) {
		t.Fatalf("connection reported %v (%v), want timeout with ErrStillLoggingOut", c.State, c.Err)
	}
	if hr, _ := op1.Status(); hr != logout.HResultOperationPending {
		t.Fatal("the running operation ended with the joined call")
	}
	select {
	case <-logouts:
		t.Fatal("a second Logout Request went out")
	default:
	}
	op1.Cancel()
	r1, err := op1.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r1.Outcome == logout.Success {
		t.Fatal("the canceled operation reported success")
	}
}
