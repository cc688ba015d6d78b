package logout

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeConn plays one connection's logout: it records the reason it was
// asked for, optionally waits on gate (or the context), and answers res.
type fakeConn struct {
	cid     uint16
	res     session.LogoutResult
	gate    chan struct{} // nil: answer at once
	silent  bool          // never answers: times out at the Timeout it is given
	entered *sync.WaitGroup
	reason  atomic.Int32
	calls   atomic.Int32
	closed  atomic.Int32
	// opts is what the last Logout was asked.
	opts atomic.Pointer[session.LogoutOptions]
}

func (c *fakeConn) CID() uint16 { return c.cid }

func (c *fakeConn) Close() error { c.closed.Add(1); return nil }

func (c *fakeConn) Logout(ctx context.Context, o session.LogoutOptions) session.LogoutResult {
	c.calls.Add(1)
	c.reason.Store(int32(o.Reason))
	c.opts.Store(&o)
	if c.entered != nil {
		c.entered.Done()
	}
	r := c.res
	r.CID, r.Reason = c.cid, o.Reason
	if c.silent {
		// A target that never answers: the session's own deadline ends it.
		t := time.NewTimer(o.Timeout)
		defer t.Stop()
		select {
		case <-t.C:
			return session.LogoutResult{CID: c.cid, Reason: o.Reason, Err: session.ErrLogoutTimeout, Duration: o.Timeout}
		case <-ctx.Done():
			return session.LogoutResult{CID: c.cid, Reason: o.Reason, Err: ctx.Err()}
		}
	}
	if c.gate != nil {
		select {
		case <-c.gate:
		case <-ctx.Done():
			return session.LogoutResult{CID: c.cid, Reason: o.Reason, Err: ctx.Err()}
		}
	}
	return r
}

type fakeSession struct {
	tsih   uint16
	conns  []*fakeConn
	closed atomic.Int32
}

func (s *fakeSession) TSIH() uint16  { return s.tsih }
func (s *fakeSession) ISID() [6]byte { return [6]byte{0x80, 0, 0, 0, 0, byte(s.tsih)} }
func (s *fakeSession) Close() error  { s.closed.Add(1); return nil }
func (s *fakeSession) Conns() []Conn {
	out := make([]Conn, len(s.conns))
	for i, c := range s.conns {
		out[i] = c
	}
	return out
}

var (
	ok      = session.LogoutResult{Responded: true, Response: pdu.LogoutSuccess}
	cleanup = session.LogoutResult{Responded: true, Response: pdu.LogoutCleanupFailed, Time2Wait: 2, Time2Retain: 20,
		Err: &session.LogoutResponseError{Response: 3, Time2Wait: 2, Time2Retain: 20}}
	timeout = session.LogoutResult{Err: session.ErrLogoutTimeout}
	reset   = session.LogoutResult{Err: session.ErrConnReset}
	reject  = session.LogoutResult{Err: &session.RejectError{Reason: pdu.RejectProtocolError, Op: pdu.OpLogoutRequest}}
)

func newSession(tsih uint16, results ...session.LogoutResult) *fakeSession {
	s := &fakeSession{tsih: tsih}
	for i, r := range results {
		s.conns = append(s.conns, &fakeConn{cid: uint16(i), res: r})
	}
	return s
}

func sessions(ss ...*fakeSession) []Session {
	out := make([]Session, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

func wait(t *testing.T, op *Operation) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := op.Wait(ctx)
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	return r
}

func TestNoSessionIsNotFoundAtOnce(t *testing.T) {
	op := Start("iqn.2026-11.org.example:none", nil, Options{})
	select {
	case <-op.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("operation with no session did not complete")
	}
	r := wait(t, op)
	if r.Outcome != SessionNotFound || r.HRESULT() != 0x8004270A || !errors.Is(r.Err(), ErrSessionNotFound) {
		t.Fatalf("got %v 0x%08x %v, want session not found 0x8004270A", r.Outcome, r.HRESULT(), r.Err())
	}
	if hr, pct := op.Status(); hr != HResultSessionNotFound || pct != 100 {
		t.Fatalf("Status = 0x%08x %d, want 0x8004270A 100", hr, pct)
	}
}

func TestOutcomes(t *testing.T) {
	for _, tc := range []struct {
		name     string
		sessions []*fakeSession
		want     Outcome
		hresult  uint32
		sentinel error
	}{
		{"all succeed", []*fakeSession{newSession(1, ok), newSession(2, ok, ok)}, Success, 0, nil},
		{"all fail", []*fakeSession{newSession(1, cleanup), newSession(2, timeout)}, Failed, 0x80042709, ErrLogoutFailed},
		{"some fail", []*fakeSession{newSession(1, ok), newSession(2, reset), newSession(3, ok)}, Incomplete, 0x80042710, ErrLogoutIncomplete},
		{"one connection of an MC/S session fails", []*fakeSession{newSession(1, ok, reject), newSession(2, ok)}, Incomplete, 0x80042710, ErrLogoutIncomplete},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := wait(t, Start("iqn.2026-11.org.example:t", sessions(tc.sessions...), Options{}))
			if r.Outcome != tc.want || r.HRESULT() != tc.hresult || !errors.Is(r.Err(), tc.sentinel) || (tc.sentinel == nil) != (r.Err() == nil) {
				t.Fatalf("outcome %v 0x%08x err %v; want %v 0x%08x %v", r.Outcome, r.HRESULT(), r.Err(), tc.want, tc.hresult, tc.sentinel)
			}
			if len(r.Sessions) != len(tc.sessions) {
				t.Fatalf("%d session results, want %d", len(r.Sessions), len(tc.sessions))
			}
			for i, sr := range r.Sessions {
				if sr.TSIH != tc.sessions[i].tsih || len(sr.Conns) != len(tc.sessions[i].conns) {
					t.Fatalf("session %d: TSIH %d with %d conns, want %d with %d", i, sr.TSIH, len(sr.Conns), tc.sessions[i].tsih, len(tc.sessions[i].conns))
				}
				// A session that logged out is closed; one that did not stays (no Force).
				if closed := tc.sessions[i].closed.Load() > 0; closed != sr.LoggedOut {
					t.Fatalf("session %d: closed %v, logged out %v", i, closed, sr.LoggedOut)
				}
			}
		})
	}
}

func TestConnDetails(t *testing.T) {
	r := wait(t, Start("iqn.2026-11.org.example:t", sessions(newSession(1, cleanup), newSession(2, timeout), newSession(3, reset), newSession(4, reject), newSession(5, ok)), Options{}))
	want := []ConnState{ConnRefused, ConnTimeout, ConnReset, ConnRejected, ConnLoggedOut}
	for i, st := range want {
		c := r.Sessions[i].Conns[0]
		if c.State != st {
			t.Errorf("session %d: state %v, want %v (%s)", i, c.State, st, c.Detail())
		}
	}
	c := r.Sessions[0].Conns[0]
	if !c.Responded || c.Response != 3 || c.Time2Wait != 2 || c.Time2Retain != 20 {
		t.Fatalf("refused connection: %+v", c)
	}
	if d := c.Detail(); d != "refused: cleanup failed (response 3, Time2Wait 2 s, Time2Retain 20 s)" {
		t.Fatalf("Detail() = %q", d)
	}
	if r.Sessions[4].Conns[0].Err != nil {
		t.Fatalf("logged-out connection has error %v", r.Sessions[4].Conns[0].Err)
	}
}

func TestPerConnectionReasons(t *testing.T) {
	single := newSession(1, ok)
	multi := newSession(2, ok, ok, ok)
	wait(t, Start("iqn.2026-11.org.example:t", sessions(single, multi), Options{}))
	if got := single.conns[0].reason.Load(); pdu.LogoutReason(got) != pdu.LogoutCloseSession {
		t.Errorf("single-connection session: reason %d, want 0", got)
	}
	for _, c := range multi.conns {
		if got := c.reason.Load(); pdu.LogoutReason(got) != pdu.LogoutCloseConnection {
			t.Errorf("MC/S connection %d: reason %d, want 1", c.cid, got)
		}
	}
}

// Every connection's Logout Request must be in flight at once: each fake
// blocks until all have entered.
func TestAllConnectionsConcurrently(t *testing.T) {
	var entered sync.WaitGroup
	gate := make(chan struct{})
	var ss []*fakeSession
	for i := 0; i < 20; i++ {
		s := newSession(uint16(i+1), ok, ok)
		for _, c := range s.conns {
			c.gate, c.entered = gate, &entered
			entered.Add(1)
		}
		ss = append(ss, s)
	}
	op := Start("iqn.2026-11.org.example:t", sessions(ss...), Options{})
	all := make(chan struct{})
	go func() { entered.Wait(); close(all) }()
	select {
	case <-all:
	case <-time.After(10 * time.Second):
		op.Cancel()
		wait(t, op)
		t.Fatal("not every connection's logout was in flight at the same time")
	}
	if hr, pct := op.Status(); hr != HResultOperationPending || pct != 0 {
		t.Fatalf("Status before any answer = 0x%08x %d, want 0x80042409 0", hr, pct)
	}
	close(gate)
	if r := wait(t, op); r.Outcome != Success {
		t.Fatalf("outcome %v", r.Outcome)
	}
}

func TestPerSessionStrategy(t *testing.T) {
	s := newSession(1, ok, ok, ok)
	r := wait(t, Start("iqn.2026-11.org.example:t", sessions(s), Options{Strategy: PerSession}))
	if r.Outcome != Success {
		t.Fatalf("outcome %v", r.Outcome)
	}
	if got := pdu.LogoutReason(s.conns[0].reason.Load()); got != pdu.LogoutCloseSession {
		t.Fatalf("first connection: reason %d, want 0", got)
	}
	for i, c := range r.Sessions[0].Conns[1:] {
		if c.State != ConnClosedWithSession {
			t.Fatalf("connection %d: %v, want closed with session", i+1, c.State)
		}
	}

	// Reason 0 unanswered on the first connection: the ladder closes it and
	// sends reason 1 on each of the others at once (issue 15, part 3). The
	// session is not logged out: its first connection went without an
	// answer, so the target may still hold it.
	s = newSession(2, timeout, ok, ok)
	r = wait(t, Start("iqn.2026-11.org.example:t", sessions(s), Options{Strategy: PerSession}))
	c := r.Sessions[0].Conns
	if r.Outcome != Failed || r.Sessions[0].LoggedOut || c[0].State != ConnTimeout || c[1].State != ConnLoggedOut || c[2].State != ConnLoggedOut {
		t.Fatalf("ladder after no answer: %v %+v", r.Outcome, c)
	}
	for j, want := range []pdu.LogoutReason{pdu.LogoutCloseSession, pdu.LogoutCloseConnection, pdu.LogoutCloseConnection} {
		if got := pdu.LogoutReason(s.conns[j].reason.Load()); got != want || s.conns[j].calls.Load() != 1 {
			t.Errorf("connection %d: reason %v in %d requests, want %v in 1", j, got, s.conns[j].calls.Load(), want)
		}
	}
	if len(c[0].Steps) != 2 || c[0].Steps[0].Kind != StepLogout || c[0].Steps[0].State != ConnTimeout || c[0].Steps[1].Kind != StepClose || s.conns[0].closed.Load() != 1 {
		t.Fatalf("unanswered connection: steps %+v, closed %d times; want the logout then a close", c[0].Steps, s.conns[0].closed.Load())
	}
	// Reason 1 on both others at once, with the session drained, after
	// the first connection's step.
	for j := 1; j < 3; j++ {
		if o := s.conns[j].opts.Load(); !o.DrainSession || len(c[j].Steps) != 1 || c[j].Steps[0].At < c[0].Steps[0].At+c[0].Steps[0].Duration {
			t.Errorf("connection %d: %+v, drain session %v", j, c[j].Steps, o.DrainSession)
		}
	}
}

// A reset after a sibling's close-session success is success, not failure.
func TestResetAfterSiblingCloseSession(t *testing.T) {
	sr := SessionResult{Conns: make([]ConnResult, 2)}
	sr.Conns[0] = ConnResult{State: ConnLoggedOut, Reason: pdu.LogoutCloseSession}
	sr.Conns[1] = ConnResult{State: ConnReset, Err: session.ErrConnReset}
	fixSiblings(&sr)
	if sr.Conns[1].State != ConnClosedWithSession || sr.Conns[1].Err != nil {
		t.Fatalf("reset after a sibling closed the session: %+v", sr.Conns[1])
	}
	sr.Conns[0].Reason = pdu.LogoutCloseConnection
	sr.Conns[1] = ConnResult{State: ConnReset, Err: session.ErrConnReset}
	fixSiblings(&sr)
	if sr.Conns[1].State != ConnReset {
		t.Fatalf("reset after a sibling's close-connection must stay a failure: %+v", sr.Conns[1])
	}
	if sessionLoggedOut(&sr) {
		t.Fatal("a session with a reset connection and no close-session success counts as logged out")
	}
}

func TestCancel(t *testing.T) {
	gate := make(chan struct{})
	defer close(gate)
	a := newSession(1, ok)
	b := newSession(2, ok)
	b.conns[0].gate = gate // never answers before the cancel
	op := Start("iqn.2026-11.org.example:t", sessions(a, b), Options{})
	// Wait until a finished, then cancel.
	deadline := time.After(10 * time.Second)
	for {
		if _, pct := op.Status(); pct >= 50 {
			break
		}
		select {
		case <-deadline:
			t.Fatal("first session never finished")
		case <-time.After(time.Millisecond): // Status is polled, as a progress line polls it
		}
	}
	if err := op.Cancel(); err != nil {
		t.Fatalf("Cancel of a running operation: %v", err)
	}
	r := wait(t, op)
	// IVdsAsync: a cancel that succeeded makes the outcome
	// VDS_E_OPERATION_CANCELED; the sessions still say which logged out.
	if r.Outcome != Canceled || r.HRESULT() != 0x8004240D || !errors.Is(r.Err(), ErrCanceled) {
		t.Fatalf("outcome %v 0x%08x %v, want canceled 0x8004240D", r.Outcome, r.HRESULT(), r.Err())
	}
	if !r.Sessions[0].LoggedOut || r.Sessions[1].LoggedOut || r.LoggedOut() != 1 {
		t.Fatalf("logged out %v/%v, want the first session only", r.Sessions[0].LoggedOut, r.Sessions[1].LoggedOut)
	}
	if err := op.Cancel(); !errors.Is(err, ErrCancelTooLate) {
		t.Fatalf("Cancel after completion: %v, want ErrCancelTooLate", err)
	}
	if hr, pct := op.Status(); hr != HResultOperationCanceled || pct != 100 {
		t.Fatalf("Status after the cancel: 0x%08x %d", hr, pct)
	}
	if c := r.Sessions[1].Conns[0]; c.State != ConnCanceled || !errors.Is(c.Err, context.Canceled) {
		t.Fatalf("canceled connection: %+v", c)
	}
}

func TestForce(t *testing.T) {
	s := newSession(1, cleanup)
	r := wait(t, Start("iqn.2026-11.org.example:t", sessions(s), Options{Force: true}))
	if r.Outcome != Failed || !r.Sessions[0].Forced || s.closed.Load() != 1 {
		t.Fatalf("force: outcome %v forced %v closed %d", r.Outcome, r.Sessions[0].Forced, s.closed.Load())
	}
}

func TestStatusMonotone(t *testing.T) {
	var ss []*fakeSession
	gates := make([]chan struct{}, 10)
	for i := range gates {
		gates[i] = make(chan struct{})
		s := newSession(uint16(i+1), ok)
		s.conns[0].gate = gates[i]
		ss = append(ss, s)
	}
	op := Start("iqn.2026-11.org.example:t", sessions(ss...), Options{})
	last := 0
	for i := range gates {
		close(gates[i])
		for {
			hr, pct := op.Status()
			done := hr != HResultOperationPending
			if pct < last {
				t.Fatalf("progress went down: %d after %d", pct, last)
			}
			last = pct
			if done || pct >= (i+1)*10 || (i == len(gates)-1 && pct == 99) {
				break
			}
			pollPause()
		}
	}
	wait(t, op)
	if hr, pct := op.Status(); hr != HResultOK || pct != 100 {
		t.Fatalf("final status 0x%08x %d, want S_OK 100", hr, pct)
	}
}

func TestOutcomeStrings(t *testing.T) {
	for o, want := range map[Outcome]string{Success: "success", SessionNotFound: "session not found", Failed: "failed", Incomplete: "incomplete"} {
		if o.String() != want {
			t.Errorf("%d: %q, want %q", int(o), o.String(), want)
		}
	}
}

// pollPause spaces out reads of Status, which has no signal to wait on: it
// is polled, as a caller showing progress polls it.
func pollPause() { time.Sleep(100 * time.Microsecond) }
