package initiator

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
)

const memTarget = "iqn.2026-11.org.goiscsi:mem"

// isid returns a distinct ISID for session i, so hooks can pick sessions.
func isid(i int) [6]byte { return [6]byte{0x80, 0, 0, 0, byte(i >> 8), byte(i)} }

// memSetup starts an in-memory target with hook and logs n sessions of
// conns connections each in to it.
func memSetup(t *testing.T, n, conns int, hook iscsitest.Hook, cfg Config) (*iscsitest.Target, *Initiator) {
	t.Helper()
	tg := iscsitest.NewTarget(iscsitest.Config{Name: memTarget, LUNs: []int64{8 << 20}, Hook: hook})
	t.Cleanup(tg.Close)
	cfg.Name = "iqn.2026-11.org.goiscsi:initiator"
	if cfg.NOPInterval == 0 {
		cfg.NOPInterval = -1
	}
	in, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := 0; i < n; i++ {
		if _, err := in.Login(ctx, tg.Addr(), memTarget, LoginOptions{Connections: conns, ISID: isid(i)}); err != nil {
			t.Fatalf("login %d: %v", i, err)
		}
	}
	return tg, in
}

func logoutWait(t *testing.T, in *Initiator, opts logout.Options) logout.Result {
	t.Helper()
	op, err := in.LogoutFromTargetWith(memTarget, opts)
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

func liveAtTarget(tg *iscsitest.Target) int {
	n := 0
	for _, s := range tg.Sessions() {
		if !s.Ended && !s.Discovery {
			n++
		}
	}
	return n
}

func TestFaultOneSessionCleanupFailed(t *testing.T) {
	tg, in := memSetup(t, 4, 1, iscsitest.FailLogout(iscsitest.SessionISID(isid(2)), pdu.LogoutCleanupFailed, 2, 20), Config{})
	r := logoutWait(t, in, logout.Options{})
	if r.Outcome != logout.Incomplete || r.HRESULT() != 0x80042710 || !errors.Is(r.Err(), logout.ErrLogoutIncomplete) {
		t.Fatalf("outcome %v 0x%08x", r.Outcome, r.HRESULT())
	}
	for _, s := range r.Sessions {
		c := s.Conns[0]
		if s.ISID == isid(2) {
			if s.LoggedOut || c.State != logout.ConnRefused || c.Response != 3 || c.Time2Wait != 2 || c.Time2Retain != 20 {
				t.Fatalf("faulted session: %+v %s", s, c.Detail())
			}
		} else if !s.LoggedOut || c.State != logout.ConnLoggedOut {
			t.Fatalf("healthy session %x: %s", s.ISID, c.Detail())
		}
	}
	// The target's own view: the healthy sessions logged out, the faulted
	// one did not (it ended when we closed its connection, as
	// DefaultTime2Retain is 0).
	for _, s := range tg.Sessions() {
		if s.Discovery {
			continue
		}
		if want := s.ISID != isid(2); s.LoggedOut != want {
			t.Fatalf("target: session %x logged out %v, want %v", s.ISID, s.LoggedOut, want)
		}
	}
}

func TestFaultEverySessionFails(t *testing.T) {
	_, in := memSetup(t, 3, 1, iscsitest.FailLogout(iscsitest.AnySession(), pdu.LogoutCleanupFailed, 0, 0), Config{})
	r := logoutWait(t, in, logout.Options{})
	if r.Outcome != logout.Failed || r.HRESULT() != 0x80042709 || !errors.Is(r.Err(), logout.ErrLogoutFailed) {
		t.Fatalf("outcome %v 0x%08x", r.Outcome, r.HRESULT())
	}
}

func TestFaultNoResponseTimesOut(t *testing.T) {
	const deadline = 400 * time.Millisecond
	tg, in := memSetup(t, 4, 1, iscsitest.NoLogoutResponse(iscsitest.SessionISID(isid(0))), Config{})
	r := logoutWait(t, in, logout.Options{Timeout: deadline})
	if r.Outcome != logout.Incomplete {
		t.Fatalf("outcome %v", r.Outcome)
	}
	for _, s := range r.Sessions {
		c := s.Conns[0]
		if s.ISID != isid(0) {
			if c.State != logout.ConnLoggedOut || c.Duration > deadline/2 {
				t.Fatalf("healthy session waited for the silent one: %s after %v", c.Detail(), c.Duration)
			}
			continue
		}
		if c.State != logout.ConnTimeout || !errors.Is(c.Err, session.ErrLogoutTimeout) {
			t.Fatalf("silent session: %s", c.Detail())
		}
		if c.Duration < deadline || c.Duration > deadline+2*time.Second {
			t.Fatalf("timed out after %v, deadline %v", c.Duration, deadline)
		}
	}
	_ = tg
}

func TestFaultResetDuringLogout(t *testing.T) {
	_, in := memSetup(t, 2, 1, iscsitest.ResetOnLogout(iscsitest.SessionISID(isid(1))), Config{})
	r := logoutWait(t, in, logout.Options{})
	if r.Outcome != logout.Incomplete {
		t.Fatalf("outcome %v", r.Outcome)
	}
	for _, s := range r.Sessions {
		if s.ISID == isid(1) && (s.LoggedOut || s.Conns[0].State != logout.ConnReset) {
			t.Fatalf("reset session: %s", s.Conns[0].Detail())
		}
	}
}

func TestFaultRejectedLogout(t *testing.T) {
	_, in := memSetup(t, 2, 1, iscsitest.RejectLogout(iscsitest.SessionISID(isid(0)), pdu.RejectProtocolError), Config{})
	r := logoutWait(t, in, logout.Options{})
	if r.Outcome != logout.Incomplete {
		t.Fatalf("outcome %v", r.Outcome)
	}
	for _, s := range r.Sessions {
		if s.ISID != isid(0) {
			continue
		}
		var rj *session.RejectError
		if c := s.Conns[0]; c.State != logout.ConnRejected || !errors.As(c.Err, &rj) || rj.Reason != pdu.RejectProtocolError {
			t.Fatalf("rejected session: %s", c.Detail())
		}
	}
}

func TestFaultCancelHalfway(t *testing.T) {
	_, in := memSetup(t, 4, 1, iscsitest.NoLogoutResponse(iscsitest.And(iscsitest.AnySession(), func(ev *iscsitest.Event) bool {
		return ev.ISID == isid(0) || ev.ISID == isid(1)
	})), Config{})
	op, err := in.LogoutFromTargetWith(memTarget, logout.Options{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	// Half the connections answer; wait for them, then cancel.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, pct := op.Status(); pct >= 50 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the healthy half never finished")
		}
		time.Sleep(time.Millisecond) // Status has no signal: it is polled, as a progress line polls it
	}
	start := time.Now()
	if err := op.Cancel(); err != nil {
		t.Fatalf("Cancel of a running logout: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := op.Wait(ctx)
	if err != nil {
		t.Fatalf("operation did not end after Cancel: %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("Cancel took %v", took)
	}
	// Issue 15: a cancel that succeeded is the outcome (VDS_E_OPERATION_CANCELED);
	// the sessions still say which had logged out.
	if r.Outcome != logout.Canceled || r.HRESULT() != 0x8004240D || r.LoggedOut() != 2 {
		t.Fatalf("outcome %v 0x%08x, %d logged out; want canceled 0x8004240D, 2", r.Outcome, r.HRESULT(), r.LoggedOut())
	}
	for _, s := range r.Sessions {
		silent := s.ISID == isid(0) || s.ISID == isid(1)
		if s.LoggedOut == silent {
			t.Fatalf("session %x: logged out %v", s.ISID, s.LoggedOut)
		}
		if st := s.Conns[0].State; silent != (st == logout.ConnCanceled) {
			t.Fatalf("session %x: %s", s.ISID, s.Conns[0].Detail())
		}
	}
	// The canceled connections are closed locally.
	for _, s := range in.Sessions(memTarget) {
		if len(s.Conns()) != 0 {
			t.Fatalf("a canceled session still has %d connections", len(s.Conns()))
		}
	}
}

func TestMCSPerConnection(t *testing.T) {
	tg, in := memSetup(t, 2, 3, nil, Config{})
	if n := len(in.Sessions(memTarget)[0].Conns()); n != 3 {
		t.Fatalf("%d connections", n)
	}
	r := logoutWait(t, in, logout.Options{})
	if r.Outcome != logout.Success {
		t.Fatalf("outcome %v", r.Outcome)
	}
	for _, s := range r.Sessions {
		if len(s.Conns) != 3 {
			t.Fatalf("%d connection results", len(s.Conns))
		}
		for _, c := range s.Conns {
			if c.Reason != pdu.LogoutCloseConnection || c.State != logout.ConnLoggedOut {
				t.Fatalf("connection %d: reason %d %s", c.CID, c.Reason, c.Detail())
			}
		}
	}
	if n := liveAtTarget(tg); n != 0 {
		t.Fatalf("target still has %d live sessions", n)
	}
}

func TestMCSPerSession(t *testing.T) {
	tg, in := memSetup(t, 2, 2, nil, Config{})
	r := logoutWait(t, in, logout.Options{Strategy: logout.PerSession})
	if r.Outcome != logout.Success {
		t.Fatalf("outcome %v: %+v", r.Outcome, r.Sessions)
	}
	for _, s := range r.Sessions {
		if s.Conns[0].Reason != pdu.LogoutCloseSession || s.Conns[0].State != logout.ConnLoggedOut || s.Conns[1].State != logout.ConnClosedWithSession {
			t.Fatalf("session %x: %s / %s", s.ISID, s.Conns[0].Detail(), s.Conns[1].Detail())
		}
	}
	if n := liveAtTarget(tg); n != 0 {
		t.Fatalf("target still has %d live sessions", n)
	}
}

func TestConcurrentCallsShareOperation(t *testing.T) {
	_, in := memSetup(t, 2, 1, iscsitest.DelayLogout(iscsitest.AnySession(), 200*time.Millisecond), Config{})
	op1, err1 := in.LogoutFromTarget(memTarget)
	op2, err2 := in.LogoutFromTarget("IQN.2026-11.ORG.GOISCSI:MEM")
	if err1 != nil || err2 != nil || op1 != op2 {
		t.Fatalf("two calls gave %p (%v) and %p (%v), want one operation", op1, err1, op2, err2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if r, _ := op1.Wait(ctx); r.Outcome != logout.Success {
		t.Fatalf("outcome %v", r.Outcome)
	}
}

func TestTargetRequestedLogout(t *testing.T) {
	events := make(chan session.AsyncEvent, 4)
	tg, in := memSetup(t, 2, 1, nil, Config{OnAsync: func(s *session.Session, ev session.AsyncEvent) { events <- ev }})
	ss := in.Sessions(memTarget)
	victim := ss[0]
	if err := tg.SendAsync(victim.TSIH(), 0, pdu.AsyncMessage{AsyncEvent: pdu.AsyncLogoutRequest, Parameter3: 0}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-events:
		if ev.Event != pdu.AsyncLogoutRequest {
			t.Fatalf("event %d", ev.Event)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("async event never delivered")
	}
	select {
	case <-victim.Ended():
	case <-time.After(10 * time.Second):
		t.Fatal("session did not log out at the target's request")
	}
	if !victim.LoggedOut() {
		t.Fatal("session ended without a successful logout")
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(in.Sessions(memTarget)) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions in the table, want 1", len(in.Sessions(memTarget)))
		}
		time.Sleep(5 * time.Millisecond) // the table is updated by the operation's completion, with no signal exported
	}
	if got := in.Sessions(memTarget)[0]; got == victim {
		t.Fatal("the wrong session left the table")
	}
	for _, s := range tg.Sessions() {
		if s.TSIH == victim.TSIH() && !s.LoggedOut {
			t.Fatalf("target sees session %d as %+v", s.TSIH, s)
		}
	}
}

// Writes race the logout: every write reported done must be on the target
// byte for byte; a write that failed may or may not be there.
func TestWritesRacingLogout(t *testing.T) {
	for round := 0; round < 5; round++ {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			tg, in := memSetup(t, 2, 2, nil, Config{})
			const block = 4096
			const writers = 8
			type attempt struct {
				data []byte
				ok   bool
			}
			hist := make([][]attempt, writers)
			var wg sync.WaitGroup
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			started := make(chan struct{}, writers)
			for w := 0; w < writers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s := in.Sessions(memTarget)[w%2]
					for i := 0; ; i++ {
						data := make([]byte, block)
						rand.Read(data)
						err := s.Write(ctx, 0, uint64(w*block/512), 512, data)
						hist[w] = append(hist[w], attempt{data, err == nil})
						if i == 2 || (err != nil && i < 2) {
							started <- struct{}{}
						}
						if err != nil {
							return
						}
					}
				}()
			}
			for w := 0; w < writers; w++ {
				select {
				case <-started:
				case <-ctx.Done():
					t.Fatal("writers did not start")
				}
			}
			r := logoutWait(t, in, logout.Options{DrainTimeout: time.Duration(round) * 5 * time.Millisecond})
			wg.Wait()
			if r.Outcome != logout.Success {
				t.Fatalf("outcome %v", r.Outcome)
			}
			lun := tg.LUNData(0)
			for w := 0; w < writers; w++ {
				got := lun[w*block : (w+1)*block]
				last := -1
				for i, a := range hist[w] {
					if a.ok {
						last = i
					}
				}
				if last < 0 {
					t.Fatalf("writer %d: no write acknowledged", w)
				}
				// What is on the target is the last acknowledged write or a
				// later one whose outcome was reported unknown.
				match := false
				for _, a := range hist[w][last:] {
					match = match || bytes.Equal(got, a.data)
				}
				if !match {
					t.Fatalf("writer %d: block on the target matches neither the last acknowledged write nor a later attempt", w)
				}
			}
		})
	}
}

// A call right after an operation completed starts a new one, which finds
// no session, rather than returning the finished operation.
func TestSecondCallAfterCompletion(t *testing.T) {
	for i := 0; i < 20; i++ {
		_, in := memSetup(t, 1, 1, nil, Config{})
		if r := logoutWait(t, in, logout.Options{}); r.Outcome != logout.Success {
			t.Fatalf("first logout: %v", r.Outcome)
		}
		if r := logoutWait(t, in, logout.Options{}); r.Outcome != logout.SessionNotFound {
			t.Fatalf("round %d: second logout right after the first: %v, want session not found", i, r.Outcome)
		}
	}
}
