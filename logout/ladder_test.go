package logout

import (
	"errors"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
)

const ladderTarget = "iqn.2026-11.org.example:ladder"

func refused(t2w uint16) session.LogoutResult {
	return session.LogoutResult{Responded: true, Response: pdu.LogoutCleanupFailed, Time2Wait: t2w, Time2Retain: 20,
		Err: &session.LogoutResponseError{Response: pdu.LogoutCleanupFailed, Time2Wait: t2w, Time2Retain: 20}}
}

// Part 2: the steps share one deadline. Three silent connections with a
// 500 ms response timeout and an 800 ms deadline: reason 0 waits 500 ms,
// then reason 1 on the two others gets the 300 ms left, not 500 ms each;
// the whole takes the deadline, not 1.5 s as one connection after another.
func TestDeadlineSharedBySteps(t *testing.T) {
	s := newSession(1, ok, ok, ok)
	for _, c := range s.conns {
		c.silent = true
	}
	opts := Options{Strategy: PerSession, Timeout: 500 * time.Millisecond, Deadline: 800 * time.Millisecond}
	start := time.Now()
	r := wait(t, Start(ladderTarget, sessions(s), opts))
	took := time.Since(start)
	if took < 750*time.Millisecond || took > opts.Deadline+connSlack {
		t.Fatalf("took %v, want about the deadline %v", took, opts.Deadline)
	}
	if r.Deadline != opts.Deadline || r.Outcome != Failed {
		t.Fatalf("deadline %v outcome %v, want %v failed", r.Deadline, r.Outcome, opts.Deadline)
	}
	if o := s.conns[0].opts.Load(); o.Reason != pdu.LogoutCloseSession || o.Timeout != 500*time.Millisecond {
		t.Fatalf("first step: %+v, want reason 0 with the 500 ms timeout", o)
	}
	for j := 1; j < 3; j++ {
		o := s.conns[j].opts.Load()
		if o.Reason != pdu.LogoutCloseConnection || o.Timeout > 300*time.Millisecond || o.Timeout < 200*time.Millisecond {
			t.Errorf("connection %d: %+v, want reason 1 with what the deadline left (about 300 ms)", j, o)
		}
		st := r.Sessions[0].Conns[j].Steps
		if len(st) != 2 || st[0].At < 500*time.Millisecond || st[0].At+st[0].Duration > opts.Deadline+50*time.Millisecond {
			t.Errorf("connection %d: steps %+v, want one after 500 ms ending within the deadline, then a close", j, st)
		}
	}
}

// A drain longer than the deadline allows is cut so that the response wait
// keeps its share.
func TestDrainWithinDeadline(t *testing.T) {
	s := newSession(1, ok)
	opts := Options{DrainTimeout: time.Minute, Timeout: time.Second, Deadline: 3 * time.Second}
	wait(t, Start(ladderTarget, sessions(s), opts))
	o := s.conns[0].opts.Load()
	if o.DrainTimeout > 2*time.Second || o.DrainTimeout < 1900*time.Millisecond || o.Timeout != time.Second {
		t.Fatalf("drain %v timeout %v, want the 2 s the response wait leaves and 1 s", o.DrainTimeout, o.Timeout)
	}
	if d := (Options{}).OperationDeadline(); d != DefaultDeadline {
		t.Errorf("default deadline %v, want %v", d, DefaultDeadline)
	}
	if d := (Options{Timeout: 100 * time.Millisecond, Strategy: PerSession}).OperationDeadline(); d != 300*time.Millisecond {
		t.Errorf("deadline with a 100 ms timeout per session: %v, want 300 ms (three steps)", d)
	}
}

// Part 3: a refusal with Time2Wait that fits: the next request waits for
// it, then reason 0 goes once more on the next connection, and succeeds.
func TestLadderTime2WaitRetry(t *testing.T) {
	s := newSession(1, refused(1), ok, ok)
	start := time.Now()
	r := wait(t, Start(ladderTarget, sessions(s), Options{Strategy: PerSession, Deadline: 5 * time.Second}))
	if took := time.Since(start); took < time.Second {
		t.Fatalf("took %v: Time2Wait 1 s not honoured", took)
	}
	c := r.Sessions[0].Conns
	if r.Outcome != Success || c[0].State != ConnRefused || c[1].State != ConnLoggedOut || c[2].State != ConnClosedWithSession {
		t.Fatalf("outcome %v, connections %v %v %v", r.Outcome, c[0].State, c[1].State, c[2].State)
	}
	if len(c[0].Steps) != 2 || c[0].Steps[0].Response != pdu.LogoutCleanupFailed || c[0].Steps[0].Time2Wait != 1 || c[0].Steps[1].Kind != StepClose {
		t.Fatalf("refused connection's steps %+v, want the refusal then a close", c[0].Steps)
	}
	if st := c[1].Steps; len(st) != 1 || st[0].Reason != pdu.LogoutCloseSession || st[0].Waited != time.Second || st[0].At < time.Second {
		t.Fatalf("retry %+v, want reason 0 after waiting 1 s", st)
	}
	if s.conns[2].calls.Load() != 1 || s.conns[0].closed.Load() != 1 || s.conns[1].closed.Load() != 0 {
		t.Fatalf("calls %d, closes %d/%d", s.conns[2].calls.Load(), s.conns[0].closed.Load(), s.conns[1].closed.Load())
	}
}

// A Time2Wait that does not fit in what the deadline leaves: no request
// may go out before it, so the connections still up are closed.
func TestLadderTime2WaitDoesNotFit(t *testing.T) {
	s := newSession(1, refused(30), ok, ok)
	start := time.Now()
	r := wait(t, Start(ladderTarget, sessions(s), Options{Strategy: PerSession, Deadline: 2 * time.Second}))
	if took := time.Since(start); took > time.Second {
		t.Fatalf("took %v, want at once", took)
	}
	c := r.Sessions[0].Conns
	if r.Outcome != Failed || c[0].State != ConnRefused {
		t.Fatalf("outcome %v, first connection %v", r.Outcome, c[0].State)
	}
	for j := 1; j < 3; j++ {
		if c[j].State != ConnClosed || s.conns[j].calls.Load() != 0 || s.conns[j].closed.Load() != 1 || len(c[j].Steps) != 1 || c[j].Steps[0].Kind != StepClose {
			t.Fatalf("connection %d: %v, %d requests, %d closes, steps %+v; want closed without a request", j, c[j].State,
				s.conns[j].calls.Load(), s.conns[j].closed.Load(), c[j].Steps)
		}
	}
}

// Refused twice (the one retry spent): reason 1 on the connection left.
func TestLadderRefusedTwiceThenReason1(t *testing.T) {
	s := newSession(1, refused(0), refused(0), ok, ok)
	r := wait(t, Start(ladderTarget, sessions(s), Options{Strategy: PerSession}))
	want := []pdu.LogoutReason{pdu.LogoutCloseSession, pdu.LogoutCloseSession, pdu.LogoutCloseConnection, pdu.LogoutCloseConnection}
	for j, w := range want {
		if got := pdu.LogoutReason(s.conns[j].reason.Load()); got != w || s.conns[j].calls.Load() != 1 {
			t.Errorf("connection %d: reason %v in %d requests, want %v in 1", j, got, s.conns[j].calls.Load(), w)
		}
	}
	if c := r.Sessions[0].Conns; c[2].State != ConnLoggedOut || c[3].State != ConnLoggedOut || r.Outcome != Failed {
		t.Fatalf("outcome %v, %+v", r.Outcome, c)
	}
}

// Part 5: a session in use is not logged out, nothing goes out on it, and
// its result says why; Force logs it out anyway.
func TestInUse(t *testing.T) {
	busy := errors.New("mounted on /mnt/data")
	for _, force := range []bool{false, true} {
		a, b := newSession(1, ok), newSession(2, ok, ok)
		var seen []SessionInfo
		opts := Options{Force: force, InUse: func(si SessionInfo) error {
			seen = append(seen, si)
			if si.TSIH == 2 {
				return busy
			}
			return nil
		}}
		r := wait(t, Start(ladderTarget, sessions(a, b), opts))
		if len(seen) != 2 || seen[1].Target != ladderTarget || len(seen[1].CIDs) != 2 {
			t.Fatalf("InUse saw %+v", seen)
		}
		sr := r.Sessions[1]
		if !errors.Is(sr.InUse, busy) {
			t.Fatalf("force %v: InUse %v", force, sr.InUse)
		}
		if !force {
			if r.Outcome != Incomplete || sr.LoggedOut || b.conns[0].calls.Load() != 0 || b.closed.Load() != 0 ||
				sr.Conns[0].State != ConnNotAttempted || !errors.Is(sr.Conns[0].Err, ErrInUse) || !errors.Is(sr.Conns[0].Err, busy) {
				t.Fatalf("in use: outcome %v, %+v, %d requests", r.Outcome, sr, b.conns[0].calls.Load())
			}
			continue
		}
		if r.Outcome != Success || !sr.LoggedOut || b.conns[0].calls.Load() != 1 {
			t.Fatalf("force: outcome %v, %+v", r.Outcome, sr)
		}
	}
}

// Part 6: one connection of a session, by CID.
func TestStartConnection(t *testing.T) {
	s := newSession(1, ok, ok, ok)
	r := wait(t, StartConnection(ladderTarget, s, 1, Options{}))
	if r.Outcome != Success || len(r.Sessions) != 1 || len(r.Sessions[0].Conns) != 1 || r.Sessions[0].Conns[0].CID != 1 {
		t.Fatalf("%v %+v", r.Outcome, r.Sessions)
	}
	if o := s.conns[1].opts.Load(); o.Reason != pdu.LogoutCloseConnection || o.DrainSession {
		t.Fatalf("options %+v, want reason 1 without draining the session", o)
	}
	if s.conns[0].calls.Load()+s.conns[2].calls.Load() != 0 {
		t.Fatal("another connection was logged out")
	}
	// The session's last connection: reason 0.
	one := newSession(2, ok)
	wait(t, StartConnection(ladderTarget, one, 0, Options{}))
	if got := pdu.LogoutReason(one.conns[0].reason.Load()); got != pdu.LogoutCloseSession {
		t.Fatalf("last connection: reason %v, want 0", got)
	}
	r = wait(t, StartConnection(ladderTarget, s, 9, Options{}))
	if r.Outcome != SessionNotFound || !r.LoggedOutOrGone() || r.Err() == nil {
		t.Fatalf("unknown CID: %v, gone %v", r.Outcome, r.LoggedOutOrGone())
	}
}

func TestLoggedOutOrGone(t *testing.T) {
	for o, want := range map[Outcome]bool{Success: true, SessionNotFound: true, Failed: false, Incomplete: false, Canceled: false} {
		r := Result{Outcome: o}
		if r.LoggedOutOrGone() != want {
			t.Errorf("%v: LoggedOutOrGone %v", o, !want)
		}
	}
}

// The target's request: the deadline is its window (clamped) plus the
// response wait, or a shorter Deadline; the result says who asked.
func TestAsyncOptionsDeadline(t *testing.T) {
	o := AsyncOptions(Options{Timeout: 2 * time.Second}, 10, time.Minute)
	if o.Deadline != 7*time.Second || !o.requested || o.parameter3 != 10 {
		t.Fatalf("deadline %v, requested %v %d; want 5 s drain + 2 s", o.Deadline, o.requested, o.parameter3)
	}
	if o := AsyncOptions(Options{Deadline: time.Second}, 10, time.Minute); o.Deadline != time.Second {
		t.Fatalf("a shorter Deadline: %v", o.Deadline)
	}
	r := wait(t, Start(ladderTarget, sessions(newSession(1, ok)), o))
	if !r.Requested || r.Parameter3 != 10 || r.Deadline != 7*time.Second {
		t.Fatalf("result: requested %v parameter3 %d deadline %v", r.Requested, r.Parameter3, r.Deadline)
	}
}

// Part 4: the policy reaches every step, and the counts add up exactly per
// connection, session and in total.
func TestInFlightCounts(t *testing.T) {
	counts := func(c, a, u int) session.LogoutResult {
		r := ok
		r.Completed, r.Aborted, r.Unknown, r.Failed = c, a, u, u
		return r
	}
	s1 := newSession(1, counts(3, 2, 1), counts(0, 4, 0))
	s2 := newSession(2, counts(5, 0, 7))
	r := wait(t, Start(ladderTarget, sessions(s1, s2), Options{InFlight: session.InFlightAbort, AbortTimeout: time.Second}))
	for _, c := range append(s1.conns, s2.conns...) {
		if o := c.opts.Load(); o.InFlight != session.InFlightAbort || o.AbortTimeout != time.Second {
			t.Fatalf("connection %d: %+v, want the abort policy with 1 s", c.cid, o)
		}
	}
	if c := r.Sessions[0].Conns[0]; c.Commands != (Commands{3, 2, 1}) || c.FailedCommands != 1 || c.Steps[0].Commands != (Commands{3, 2, 1}) {
		t.Fatalf("connection counts %+v (failed %d)", c.Commands, c.FailedCommands)
	}
	if got := r.Sessions[0].Commands; got != (Commands{3, 6, 1}) {
		t.Fatalf("session counts %+v", got)
	}
	if got := r.Commands; got != (Commands{8, 6, 8}) || got.Total() != 22 {
		t.Fatalf("total counts %+v", got)
	}
}
