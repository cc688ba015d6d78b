package logout

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/session"
)

const joinTarget = "iqn.2026-11.org.example:join"

// The target's Parameter3 is clamped: half the clamped window drains, and
// the response wait stays the configured one.
func TestAsyncOptionsClamped(t *testing.T) {
	for _, tc := range []struct {
		p3              uint16
		max, timeout    time.Duration
		drain, response time.Duration
	}{
		{p3: 0, drain: 0, response: session.DefaultLogoutTimeout},
		{p3: 5, drain: 2500 * time.Millisecond, response: session.DefaultLogoutTimeout},
		{p3: 65535, drain: session.MaxAsyncLogoutWait / 2, response: session.DefaultLogoutTimeout},
		{p3: 65535, max: time.Second, drain: 500 * time.Millisecond, response: session.DefaultLogoutTimeout},
		{p3: 65535, max: time.Second, timeout: 3 * time.Second, drain: 500 * time.Millisecond, response: 3 * time.Second},
		{p3: 1, max: time.Minute, timeout: 2 * time.Second, drain: 500 * time.Millisecond, response: 2 * time.Second},
	} {
		o := AsyncOptions(Options{Timeout: tc.timeout, Force: true}, tc.p3, tc.max)
		if o.DrainTimeout != tc.drain || o.Timeout != tc.response || o.Strategy != PerSession || !o.Force {
			t.Errorf("AsyncOptions(p3 %d, max %v, timeout %v) = drain %v timeout %v strategy %v force %v; want drain %v timeout %v per-session, force kept",
				tc.p3, tc.max, tc.timeout, o.DrainTimeout, o.Timeout, o.Strategy, o.Force, tc.drain, tc.response)
		}
	}
	if session.MaxAsyncLogoutWait > time.Minute {
		t.Errorf("MaxAsyncLogoutWait %v: a target could keep a session draining for longer than a minute", session.MaxAsyncLogoutWait)
	}
}

// A connection whose logout someone else runs (the fake never answers
// until released) is waited for at most the caller's ConnBound, then
// reported as still logging out: a timeout, not logged out.
func TestConnBoundEndsWaitForLogoutRunningElsewhere(t *testing.T) {
	gate := make(chan struct{})
	defer close(gate)
	s := newSession(1, ok)
	s.conns[0].gate = gate
	opts := Options{Timeout: 200 * time.Millisecond}
	start := time.Now()
	r := wait(t, Start(joinTarget, sessions(s), opts))
	took := time.Since(start)
	if took < opts.ConnBound() || took > opts.ConnBound()+3*time.Second {
		t.Errorf("took %v, want about the bound %v", took, opts.ConnBound())
	}
	c := r.Sessions[0].Conns[0]
	if r.Outcome != Failed || r.Sessions[0].LoggedOut || c.State != ConnTimeout || !errors.Is(c.Err, ErrStillLoggingOut) {
		t.Fatalf("outcome %v, logged out %v, connection %+v; want failed, not logged out, timeout with ErrStillLoggingOut",
			r.Outcome, r.Sessions[0].LoggedOut, c)
	}
}

// A caller whose bound is not tighter gets the running operation itself.
func TestJoinSameOperationWhenNotTighter(t *testing.T) {
	gate := make(chan struct{})
	s := newSession(1, ok)
	s.conns[0].gate = gate
	op := Start(joinTarget, sessions(s), Options{Timeout: 10 * time.Second})
	if j := op.Join(Options{Timeout: 10 * time.Second}); j != op {
		t.Error("a caller with the same timeout got another operation")
	}
	if j := op.Join(Options{Timeout: 20 * time.Second}); j != op {
		t.Error("a caller with a longer timeout got another operation")
	}
	close(gate)
	if r := wait(t, op); r.Outcome != Success {
		t.Fatalf("outcome %v", r.Outcome)
	}
	if j := op.Join(Options{Timeout: time.Millisecond}); j != op {
		t.Error("joining a completed operation did not return it")
	}
}

// A caller with a tighter bound joins a running operation: its own
// operation completes at its bound with what has ended so far, the session
// still logging out not logged out, and never success; the shared
// operation goes on and later completes by itself.
func TestJoinEndsAtCallersBound(t *testing.T) {
	gate := make(chan struct{})
	a := newSession(1, ok)
	b := newSession(2, ok)
	b.conns[0].gate = gate
	op := Start(joinTarget, sessions(a, b), Options{Timeout: 30 * time.Second})
	deadline := time.After(10 * time.Second)
	for {
		if _, pct := op.Status(); pct >= 50 {
			break
		}
		select {
		case <-deadline:
			close(gate)
			t.Fatal("first session never finished")
		case <-time.After(time.Millisecond): // Status is polled, as a progress line polls it
		}
	}
	var completed *Result
	opts := Options{Timeout: 100 * time.Millisecond, OnComplete: func(r *Result) { completed = r }}
	start := time.Now()
	v := op.Join(opts)
	if v == op {
		close(gate)
		t.Fatal("a caller with a 100 ms timeout got the 30 s operation itself")
	}
	if _, pct := v.Status(); pct != 50 {
		t.Errorf("joined operation's progress %d%%, want the shared operation's 50%%", pct)
	}
	r := wait(t, v)
	took := time.Since(start)
	if took < opts.ConnBound() || took > opts.ConnBound()+3*time.Second {
		t.Errorf("joined operation took %v, want its bound %v", took, opts.ConnBound())
	}
	if r.Outcome != Incomplete || !r.Sessions[0].LoggedOut || r.Sessions[1].LoggedOut {
		t.Fatalf("joined: outcome %v, logged out %v/%v; want incomplete, first only", r.Outcome,
			r.Sessions[0].LoggedOut, r.Sessions[1].LoggedOut)
	}
	if c := r.Sessions[1].Conns[0]; c.State != ConnTimeout || !errors.Is(c.Err, ErrStillLoggingOut) || c.CID != 0 {
		t.Fatalf("connection still logging out reported %+v, want CID 0, timeout, ErrStillLoggingOut", c)
	}
	if completed == nil || completed.Outcome != Incomplete {
		t.Fatalf("the caller's OnComplete saw %+v, want the incomplete result", completed)
	}
	if hr, _ := op.Status(); hr != HResultOperationPending {
		t.Fatal("the shared operation ended with the caller's wait")
	}
	close(gate)
	if r := wait(t, op); r.Outcome != Success {
		t.Fatalf("shared operation: %v, want success", r.Outcome)
	}
	if r := wait(t, v); r.Outcome != Incomplete {
		t.Fatalf("joined operation's result changed to %v", r.Outcome)
	}
	if hr, pct := v.Status(); hr != HResultLogoutIncomplete || pct != 100 {
		t.Fatalf("joined status 0x%08x %d, want 0x80042710 100", hr, pct)
	}
}

// A joined operation whose shared one completes first has its result.
func TestJoinFollowsSharedResult(t *testing.T) {
	gate := make(chan struct{})
	s := newSession(1, ok)
	s.conns[0].gate = gate
	op := Start(joinTarget, sessions(s), Options{Timeout: 30 * time.Second})
	v := op.Join(Options{Timeout: 10 * time.Second})
	if v == op {
		close(gate)
		t.Fatal("a 10 s caller got the 30 s operation itself")
	}
	close(gate)
	if r := wait(t, v); r.Outcome != Success || !r.Sessions[0].LoggedOut || r.Sessions[0].Conns[0].State != ConnLoggedOut {
		t.Fatalf("joined: %+v, want the shared success", r)
	}
}

// Canceling a joined operation ends that caller's wait, its connection
// still logging out reported canceled; the shared operation goes on.
func TestJoinCancelEndsOnlyTheCallersWait(t *testing.T) {
	gate := make(chan struct{})
	s := newSession(1, ok)
	s.conns[0].gate = gate
	op := Start(joinTarget, sessions(s), Options{Timeout: 30 * time.Second})
	v := op.Join(Options{Timeout: 10 * time.Second})
	if err := v.Cancel(); err != nil {
		t.Fatalf("Cancel: %v", err)
	}
	r := wait(t, v)
	if c := r.Sessions[0].Conns[0]; r.Outcome != Canceled || c.State != ConnCanceled || !errors.Is(c.Err, context.Canceled) {
		t.Fatalf("canceled join: outcome %v, connection %+v", r.Outcome, c)
	}
	select {
	case <-op.Done():
		t.Fatal("canceling a joined operation ended the shared one")
	default:
	}
	close(gate)
	if r := wait(t, op); r.Outcome != Success {
		t.Fatalf("shared: %v", r.Outcome)
	}
}
