package reliability

// Fault matrix, asynchronous message rows (docs/RELIABILITY.md), end to end
// through the initiator against the in-memory target.

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/initiator"
	"github.com/goiscsi/iscsi/internal/testutil"
	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
)

func isLogout(ev *iscsitest.Event) bool { return ev.Header.Opcode() == pdu.OpLogoutRequest }

func sendAsync(t *testing.T, e *memEnv, s *session.Session, cid uint16, msg pdu.AsyncMessage) {
	t.Helper()
	if err := e.tg.SendAsync(s.TSIH(), cid, msg, nil); err != nil {
		t.Fatalf("SendAsync: %v", err)
	}
}

// loggedOutByTarget checks a session that logged out at the target's request.
func loggedOutByTarget(t *testing.T, e *memEnv, s *session.Session) {
	t.Helper()
	waitEnded(t, s)
	if !s.LoggedOut() {
		t.Error("session ended without logging out")
	}
	if !e.targetSession(t, s.ISID()).LoggedOut {
		t.Error("the target does not list the session as logged out")
	}
	if n := len(e.in.Sessions(memIQN)); n != 0 {
		t.Errorf("%d sessions left in the initiator's table", n)
	}
}

// Async event 1 with Parameter3 = 0 → the initiator logs the session out at
// once (reason 0); it leaves the initiator's table.
func TestFaultAsyncLogoutNow(t *testing.T) {
	logouts := make(chan *iscsitest.Event, 8)
	e := newMem(t, observe(isLogout, logouts), nil, initiator.Config{})
	s := e.login(t, 1, 1)[0]
	sent := time.Now()
	sendAsync(t, e, s, 0, pdu.AsyncMessage{AsyncEvent: pdu.AsyncLogoutRequest, Parameter3: 0})
	ev := testutil.Recv(t, logouts, wait, "Logout Request")
	if d := time.Since(sent); d > 2*time.Second {
		t.Errorf("Logout Request %v after an event asking for it now", d)
	}
	if lr := ev.PDU.(*pdu.LogoutRequest); lr.ReasonCode != pdu.LogoutCloseSession {
		t.Errorf("reason %d, want 0", lr.ReasonCode)
	}
	loggedOutByTarget(t, e, s)
}

// Async event 1 with Parameter3 = 5 while a command runs → the command may
// finish (drain), then the logout goes out within the 5 s.
func TestFaultAsyncLogoutIn5s(t *testing.T) {
	logouts := make(chan *iscsitest.Event, 8)
	cmds := make(chan *iscsitest.Event, 8)
	hook := iscsitest.Chain(observe(isLogout, logouts), observe(iscsitest.OpcodeIs(pdu.OpSCSICommand), cmds),
		iscsitest.When(iscsitest.OpcodeIs(pdu.OpSCSICommand), iscsitest.Delay(time.Second)))
	e := newMem(t, hook, nil, initiator.Config{})
	s := e.login(t, 1, 1)[0]
	read := make(chan error, 1)
	var readDone time.Time
	go func() {
		err := s.Read(context.Background(), 0, 0, 512, make([]byte, 4096))
		readDone = time.Now()
		read <- err
	}()
	testutil.Recv(t, cmds, wait, "SCSI Command")
	sent := time.Now()
	sendAsync(t, e, s, 0, pdu.AsyncMessage{AsyncEvent: pdu.AsyncLogoutRequest, Parameter3: 5})
	if err := testutil.Recv(t, read, wait, "read"); err != nil {
		t.Fatalf("the command running when the target asked to log out: %v", err)
	}
	testutil.Recv(t, logouts, wait, "Logout Request")
	got := time.Now()
	if got.Before(readDone) {
		t.Error("Logout Request before the running command finished")
	}
	if d := got.Sub(sent); d > 5*time.Second {
		t.Errorf("Logout Request %v after the event, past its 5 s", d)
	}
	loggedOutByTarget(t, e, s)
}

// Async event 2 for one connection of a two-connection session → that
// connection's commands fail with session.ErrTargetDropped and it closes;
// the session keeps the other and its I/O.
func TestFaultAsyncConnectionDrop(t *testing.T) {
	e := newMem(t, nil, nil, initiator.Config{})
	s := e.login(t, 1, 2)[0]
	var c1 *session.Conn
	for _, c := range s.Conns() {
		if c.CID() == 1 {
			c1 = c
		}
	}
	sendAsync(t, e, s, 1, pdu.AsyncMessage{AsyncEvent: pdu.AsyncConnectionDrop, Parameter1: 1, Parameter2: 2, Parameter3: 20})
	testutil.Recv(t, c1.Done(), wait, "connection 1 closed")
	if !errors.Is(c1.Err(), session.ErrTargetDropped) {
		t.Errorf("connection 1: %v, want session.ErrTargetDropped", c1.Err())
	}
	if n := len(s.Conns()); n != 1 {
		t.Fatalf("%d connections left, want 1", n)
	}
	for i := 0; i < 4; i++ {
		if err := s.Read(context.Background(), 0, 0, 512, make([]byte, 512)); err != nil {
			t.Fatalf("I/O on the connection left: %v", err)
		}
	}
}

// Async event 2 for a CID the session does not have → ignored; session and
// both connections kept.
func TestFaultAsyncConnectionDropUnknownCID(t *testing.T) {
	events := make(chan session.AsyncEvent, 1)
	e := newMem(t, nil, nil, initiator.Config{OnAsync: func(s *session.Session, ev session.AsyncEvent) { events <- ev }})
	s := e.login(t, 1, 2)[0]
	sendAsync(t, e, s, 0, pdu.AsyncMessage{AsyncEvent: pdu.AsyncConnectionDrop, Parameter1: 9, Parameter3: 0})
	if ev := testutil.Recv(t, events, wait, "event"); ev.Parameter1 != 9 {
		t.Errorf("event %+v", ev)
	}
	// Round robin: these go over both connections.
	for i := 0; i < 4; i++ {
		if err := s.Read(context.Background(), 0, 0, 512, make([]byte, 512)); err != nil {
			t.Fatalf("I/O after an event for an unknown CID: %v", err)
		}
	}
	if n := len(s.Conns()); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
}

// Async event 3 (the target drops every connection) with a command in
// flight → the command fails with session.ErrTargetDropped, saying its
// outcome is unknown; every connection closes and the session ends. This
// is the session without recovery (NoRecovery): with it, on by default,
// the session reinstates itself and the read goes again (session's
// TestRecovery* tests).
func TestFaultAsyncSessionDrop(t *testing.T) {
	cmds := make(chan *iscsitest.Event, 8)
	hook := iscsitest.Chain(observe(iscsitest.OpcodeIs(pdu.OpSCSICommand), cmds),
		iscsitest.When(iscsitest.OpcodeIs(pdu.OpSCSICommand), iscsitest.Drop))
	e := newMem(t, hook, nil, initiator.Config{RecoveryConfig: initiator.RecoveryConfig{NoRecovery: true}})
	s := e.login(t, 1, 2)[0]
	read := make(chan error, 1)
	go func() { read <- s.Read(context.Background(), 0, 0, 512, make([]byte, 512)) }()
	testutil.Recv(t, cmds, wait, "SCSI Command")
	sendAsync(t, e, s, 0, pdu.AsyncMessage{AsyncEvent: pdu.AsyncSessionDrop, Parameter2: 2, Parameter3: 20})
	err := testutil.Recv(t, read, wait, "read")
	if !errors.Is(err, session.ErrTargetDropped) || !strings.Contains(err.Error(), "unknown") {
		t.Fatalf("read: %v, want session.ErrTargetDropped, outcome unknown", err)
	}
	waitEnded(t, s)
	if s.LoggedOut() {
		t.Error("a dropped session says it logged out")
	}
}

// Async event 1 twice → one Logout Request.
func TestFaultAsyncLogoutRepeated(t *testing.T) {
	logouts := make(chan *iscsitest.Event, 8)
	e := newMem(t, observe(isLogout, logouts), nil, initiator.Config{})
	s := e.login(t, 1, 1)[0]
	msg := pdu.AsyncMessage{AsyncEvent: pdu.AsyncLogoutRequest, Parameter3: 1}
	sendAsync(t, e, s, 0, msg)
	e.tg.SendAsync(s.TSIH(), 0, msg, nil) // may find the connection gone
	testutil.Recv(t, logouts, wait, "Logout Request")
	loggedOutByTarget(t, e, s)
	if n := e.tg.Stats().LogoutRequests[pdu.LogoutCloseSession]; n != 1 {
		t.Errorf("%d Logout Requests, want 1", n)
	}
}
