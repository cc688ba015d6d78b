package iscsitest

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/pdu"
)

var (
	faultyISID = [6]byte{0x80, 0, 0, 0, 0, 0xee}
	okISID     = [6]byte{0x80, 0, 0, 0, 0, 0x01}
)

// twoSessions logs in a session the hook matches and one it does not.
func twoSessions(t *testing.T, hook Hook) (*Target, *ini, *ini) {
	t.Helper()
	tg := newTarget(t, Config{Hook: hook})
	bad, good := dial(t, tg), dial(t, tg)
	bad.isid, good.isid = faultyISID, okISID
	bad.login(loginOpts{})
	good.login(loginOpts{})
	return tg, bad, good
}

// goodLogout checks that the session the hook does not match logs out.
func goodLogout(t *testing.T, tg *Target, good *ini) {
	t.Helper()
	if lr := good.logoutResp(pdu.LogoutCloseSession, 0); lr.Response != 0 {
		t.Fatalf("unfaulted session: logout %+v", lr)
	}
	good.expectClosed(false)
	if s := sessionByTSIH(tg, good.tsih); !s.LoggedOut {
		t.Fatalf("unfaulted session: %+v", s)
	}
}

func TestFailLogout(t *testing.T) {
	for _, code := range []pdu.LogoutResponseCode{pdu.LogoutCIDNotFound, pdu.LogoutRecoveryUnsupported, pdu.LogoutCleanupFailed} {
		tg, bad, good := twoSessions(t, FailLogout(SessionISID(faultyISID), code, 7, 9))
		lr := bad.logoutResp(pdu.LogoutCloseSession, 0)
		if lr.Response != code || lr.Time2Wait != 7 || lr.Time2Retain != 9 {
			t.Fatalf("FailLogout(%d, 7, 9) answered %+v", code, lr)
		}
		// Nothing happened: the connection and the session stay.
		bad.nop(nil)
		if s := sessionByTSIH(tg, bad.tsih); s.Ended || len(s.CIDs) != 1 {
			t.Fatalf("faulted session: %+v", s)
		}
		goodLogout(t, tg, good)
		if st := tg.Stats(); st.LogoutRequests[0] != 2 || st.Logouts[0] != 1 {
			t.Fatalf("Stats: requests %v, successes %v", st.LogoutRequests, st.Logouts)
		}
	}
}

func TestNoLogoutResponse(t *testing.T) {
	tg, bad, good := twoSessions(t, NoLogoutResponse(SessionISID(faultyISID)))
	bad.send(&pdu.LogoutRequest{Immediate: true, ITT: bad.nextITT(), CmdSN: *bad.cmdSN}, nil)
	bad.expectSilence(300 * time.Millisecond)
	goodLogout(t, tg, good)
	// The target keeps the connection until the initiator gives up.
	if s := sessionByTSIH(tg, bad.tsih); s.Ended {
		t.Fatalf("faulted session ended: %+v", s)
	}
	bad.nc.Close()
	waitFor(t, "the faulted session to fail", func() bool { return sessionByTSIH(tg, bad.tsih).Failed })
	if s := sessionByTSIH(tg, bad.tsih); s.LoggedOut || s.Ended {
		t.Fatalf("faulted session: %+v", s)
	}
}

func TestResetOnLogout(t *testing.T) {
	tg, bad, good := twoSessions(t, ResetOnLogout(SessionISID(faultyISID)))
	bad.send(&pdu.LogoutRequest{Immediate: true, ITT: bad.nextITT(), CmdSN: *bad.cmdSN}, nil)
	bad.expectClosed(true)
	goodLogout(t, tg, good)
}

func TestCloseOnLogout(t *testing.T) {
	tg, bad, good := twoSessions(t, CloseOnLogout(SessionISID(faultyISID)))
	bad.send(&pdu.LogoutRequest{Immediate: true, ITT: bad.nextITT(), CmdSN: *bad.cmdSN}, nil)
	bad.expectClosed(false)
	goodLogout(t, tg, good)
}

func TestRejectLogout(t *testing.T) {
	tg, bad, good := twoSessions(t, RejectLogout(SessionISID(faultyISID), pdu.RejectImmediateCommand))
	p := bad.logout(pdu.LogoutCloseSession, 0)
	rj, ok := p.(*pdu.Reject)
	if !ok || rj.Reason != pdu.RejectImmediateCommand || rj.ITT != 0xffffffff {
		t.Fatalf("got %s %+v, want a Reject 0x06", p.Opcode(), p)
	}
	bad.nop(nil)
	goodLogout(t, tg, good)
}

func TestRejectCarriesHeader(t *testing.T) {
	tg := newTarget(t, Config{Hook: RejectLogout(nil, pdu.RejectProtocolError)})
	i := dial(t, tg)
	i.login(loginOpts{})
	i.send(&pdu.LogoutRequest{Immediate: true, ReasonCode: 1, ITT: 0xabcd, CID: 0, CmdSN: *i.cmdSN}, nil)
	p, data := i.recv()
	if _, ok := p.(*pdu.Reject); !ok || len(data) != pdu.BHSLen {
		t.Fatalf("got %s with %d bytes of data", p.Opcode(), len(data))
	}
	var h pdu.BHS
	copy(h[:], data)
	if lr, err := pdu.Decode(&h); err != nil || lr.(*pdu.LogoutRequest).ITT != 0xabcd || lr.(*pdu.LogoutRequest).ReasonCode != 1 {
		t.Fatalf("rejected header: %v %+v", err, lr)
	}
}

func TestDelayLogout(t *testing.T) {
	tg := newTarget(t, Config{Hook: DelayLogout(AnySession(), 200*time.Millisecond)})
	i := dial(t, tg)
	i.login(loginOpts{})
	start := time.Now()
	if lr := i.logoutResp(pdu.LogoutCloseSession, 0); lr.Response != 0 {
		t.Fatalf("logout %+v", lr)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("response after %v, want 200ms or more", d)
	}
}

func TestActionThen(t *testing.T) {
	for _, reset := range []bool{false, true} {
		a := LogoutResponse(pdu.LogoutCleanupFailed, 3, 4).ThenClose()
		if reset {
			a = LogoutResponse(pdu.LogoutCleanupFailed, 3, 4).ThenReset()
		}
		tg := newTarget(t, Config{Hook: OnLogout(nil, a)})
		i := dial(t, tg)
		i.login(loginOpts{})
		if lr := i.logoutResp(pdu.LogoutCloseSession, 0); lr.Response != 3 || lr.Time2Wait != 3 || lr.Time2Retain != 4 {
			t.Fatalf("logout %+v", lr)
		}
		i.expectClosed(reset)
	}
}

func TestOnceAndChain(t *testing.T) {
	var seen atomic.Int32
	count := func(ev *Event) Action {
		if ev.Header.Opcode() == pdu.OpLogoutRequest {
			seen.Add(1)
		}
		return Continue
	}
	tg := newTarget(t, Config{Hook: Chain(count, nil, Once(FailLogout(nil, pdu.LogoutCleanupFailed, 0, 0)))})
	i := dial(t, tg)
	i.login(loginOpts{})
	if lr := i.logoutResp(pdu.LogoutCloseSession, 0); lr.Response != pdu.LogoutCleanupFailed {
		t.Fatalf("first logout %+v", lr)
	}
	if lr := i.logoutResp(pdu.LogoutCloseSession, 0); lr.Response != 0 {
		t.Fatalf("second logout %+v", lr)
	}
	if n := seen.Load(); n != 2 {
		t.Fatalf("the hook saw %d Logout Requests, want 2", n)
	}
}

func TestHookEvent(t *testing.T) {
	evs := make(chan Event, 16)
	hook := func(ev *Event) Action {
		e := *ev
		e.Data = append([]byte(nil), ev.Data...)
		evs <- e
		return Continue
	}
	tg := newTarget(t, Config{Hook: hook})
	i := dial(t, tg)
	i.cid = 3
	i.login(loginOpts{})
	i.nop([]byte("abc"))
	var ev Event
	for ev.Header == nil || ev.Header.Opcode() != pdu.OpNOPOut {
		select {
		case ev = <-evs:
		case <-time.After(wait):
			t.Fatal("no event for the NOP-Out")
		}
	}
	if ev.TSIH != i.tsih || ev.CID != 3 || ev.ISID != i.isid || string(ev.Data) != "abc" || ev.Conn == nil ||
		ev.Conn.TSIH() != i.tsih || ev.Conn.CID() != 3 {
		t.Fatalf("event %+v", ev)
	}
	if _, ok := ev.PDU.(*pdu.NOPOut); !ok {
		t.Fatalf("event PDU %T", ev.PDU)
	}
}

// TestHookSends has a hook answer a NOP-Out with a PDU of its own, then
// with malformed bytes.
func TestHookSends(t *testing.T) {
	var n atomic.Int32
	hook := func(ev *Event) Action {
		if ev.Header.Opcode() != pdu.OpNOPOut {
			return Continue
		}
		if n.Add(1) == 1 {
			return Respond(&pdu.NOPIn{ITT: ev.Header.ITT(), TTT: 0xffffffff, LUN: 42}, []byte("hooked"))
		}
		var h pdu.BHS
		h[0] = 0x3a // no such opcode
		ev.Conn.SendRaw(&h, nil, nil)
		return Drop
	}
	tg := newTarget(t, Config{Hook: hook})
	i := dial(t, tg)
	i.login(loginOpts{})
	itt := i.nextITT()
	i.send(&pdu.NOPOut{Immediate: true, ITT: itt, TTT: 0xffffffff, CmdSN: *i.cmdSN}, nil)
	p, data := i.recv()
	if in, ok := p.(*pdu.NOPIn); !ok || in.ITT != itt || in.LUN != 42 || string(data) != "hooked" {
		t.Fatalf("got %+v %q", p, data)
	}
	i.send(&pdu.NOPOut{Immediate: true, ITT: i.nextITT(), TTT: 0xffffffff, CmdSN: *i.cmdSN}, nil)
	_, _, err := i.tryRecv(wait)
	var pe *pdu.ProtocolError
	if !errors.As(err, &pe) || pe.Field != "Opcode" {
		t.Fatalf("got %v, want a bad opcode", err)
	}
}

func TestSendAsync(t *testing.T) {
	tg := newTarget(t, Config{})
	i := dial(t, tg)
	i.cid = 2
	i.login(loginOpts{})
	i.nop(nil)
	if err := tg.SendAsync(i.tsih, 2, pdu.AsyncMessage{AsyncEvent: pdu.AsyncLogoutRequest, Parameter3: 5}, nil); err != nil {
		t.Fatal(err)
	}
	p, _ := i.recv()
	am, ok := p.(*pdu.AsyncMessage)
	if !ok || am.AsyncEvent != pdu.AsyncLogoutRequest || am.Parameter3 != 5 || am.ITT != 0xffffffff {
		t.Fatalf("got %s %+v", p.Opcode(), p)
	}
	if err := tg.SendAsync(i.tsih, 9, pdu.AsyncMessage{}, nil); err == nil {
		t.Fatal("SendAsync to an unknown CID succeeded")
	}
	// The initiator answers as asked: logout.
	if lr := i.logoutResp(pdu.LogoutCloseConnection, 2); lr.Response != 0 {
		t.Fatalf("logout %+v", lr)
	}
	if tg.Conn(i.tsih, 2) != nil {
		t.Fatal("Conn() finds a logged out connection")
	}
}

// TestTargetDropsConnection closes and resets connections from the test,
// as events 2 and 3 announce.
func TestTargetDropsConnection(t *testing.T) {
	tg := newTarget(t, Config{})
	cs := mcs(t, tg, 2)
	tg.SendAsync(cs[0].tsih, 1, pdu.AsyncMessage{AsyncEvent: pdu.AsyncConnectionDrop, Parameter1: 1}, nil)
	if p, _ := cs[1].recv(); p.(*pdu.AsyncMessage).Parameter1 != 1 {
		t.Fatalf("got %+v", p)
	}
	tg.Conn(cs[0].tsih, 1).Reset()
	cs[1].expectClosed(true)
	tg.Conn(cs[0].tsih, 0).Close()
	cs[0].expectClosed(false)
	waitFor(t, "the session to fail", func() bool { return sessionByTSIH(tg, cs[0].tsih).Failed })
}
