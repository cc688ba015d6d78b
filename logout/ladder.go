package logout

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
)

// minExchange is the least time a Logout Request is sent with: a step the
// deadline leaves less for is not taken, and the connection is closed
// instead. A target answers a logout in milliseconds.
const minExchange = 100 * time.Millisecond

// ladder logs out one session, session i of op, within the operation's
// deadline, and records every step per connection.
type ladder struct {
	op       *Operation
	ctx      context.Context
	i        int
	cs       []Conn
	opts     Options
	start    time.Time // the operation's
	deadline time.Time // the operation's
	// res is each connection's result as the steps go; a connection's is
	// handed to op (setConn) once it is final. Each connection has its own
	// goroutine at most, which alone writes its entry.
	res []ConnResult
}

func (l *ladder) run(p plan) {
	l.res = make([]ConnResult, len(l.cs))
	for j, c := range l.cs {
		l.res[j] = ConnResult{CID: c.CID(), Reason: p.reason, State: ConnNotAttempted}
	}
	if p.ladder {
		l.climb()
		return
	}
	l.atOnce(p.reason)
}

// left is what remains of the operation's deadline.
func (l *ladder) left() time.Duration { return time.Until(l.deadline) }

// atOnce sends reason on every connection at once (PerConnection, or one
// connection of StartConnection). Reason 1 on every connection of a
// session also drains the whole session first (DrainSession).
func (l *ladder) atOnce(reason pdu.LogoutReason) {
	drainSession := reason == pdu.LogoutCloseConnection && len(l.cs) > 1
	var wg sync.WaitGroup
	for j := range l.cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.tryConn(j, reason, drainSession, 0)
		}()
	}
	wg.Wait()
	l.op.mu.Lock()
	fixSiblings(&l.op.res.Sessions[l.i])
	l.op.mu.Unlock()
}

// climb is PerSession's escalation ladder. Reason 0 on one connection; a
// refusal carries Time2Wait, the least time before another logout (RFC
// 7143 §11.15.2), so the next request waits for it if it fits in the
// deadline (else the connections still up are closed: no request may go
// out before it) and then reason 0 goes once more, on the next connection,
// as the refused one is closed (§8.1.3, cleanup). Refused again, or
// unanswered (no response, a reset, a Reject): reason 1 on each connection
// still up, at once; each connection whose logout failed is closed.
func (l *ladder) climb() {
	up := make([]int, len(l.cs))
	for j := range up {
		up[j] = j
	}
	retried := false
	var waited time.Duration
	for len(up) > 0 {
		j := up[0]
		if l.stopped(up) {
			return
		}
		up = up[1:]
		st := l.logout(j, pdu.LogoutCloseSession, false, waited)
		waited = 0
		if st.State == ConnLoggedOut && st.Reason == pdu.LogoutCloseSession {
			l.finish(j)
			l.closedWithSession(up)
			return
		}
		if st.State.ok() {
			// A logout of that connection alone was running: it ended
			// well; the session goes on with the others.
			l.finish(j)
			continue
		}
		l.closeFailed(j, st)
		l.finish(j)
		if st.State != ConnRefused || len(up) == 0 {
			break
		}
		if w := time.Duration(st.Time2Wait) * time.Second; w > 0 && st.Response != pdu.LogoutCIDNotFound {
			if w+minExchange > l.left() {
				l.closeRest(up, fmt.Errorf("the refusal on CID %d asks to wait Time2Wait %d s before another logout; %v left of the deadline",
					l.cs[j].CID(), st.Time2Wait, l.left().Round(time.Millisecond)))
				return
			}
			if !l.sleep(w) {
				l.cancelRest(up)
				return
			}
			waited = w
		}
		if retried {
			break
		}
		retried = true
	}
	if len(up) == 0 || l.stopped(up) {
		return
	}
	var wg sync.WaitGroup
	for _, j := range up {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.tryConn(j, pdu.LogoutCloseConnection, len(up) > 1, waited)
		}()
	}
	wg.Wait()
}

// stopped ends the ladder before a step on the connections in idx when the
// operation was canceled or its deadline leaves no time for a request.
func (l *ladder) stopped(idx []int) bool {
	if l.ctx.Err() != nil {
		l.cancelRest(idx)
		return true
	}
	if left := l.left(); left < minExchange {
		l.closeRest(idx, fmt.Errorf("the operation's deadline (%v) left no time for a Logout Request", l.opts.OperationDeadline()))
		return true
	}
	return false
}

// tryConn takes one logout step on connection j (unless canceled or out of
// time), closes the connection if it failed, and hands its result over.
func (l *ladder) tryConn(j int, reason pdu.LogoutReason, drainSession bool, waited time.Duration) {
	if l.stopped([]int{j}) {
		return
	}
	st := l.logout(j, reason, drainSession, waited)
	if !st.State.ok() {
		l.closeFailed(j, st)
	}
	l.finish(j)
}

// logout sends one Logout Request on connection j with what the deadline
// leaves: the response wait is Timeout or less; the drain (DrainTimeout)
// or the abort (AbortTimeout) before it no more than the larger of what the
// response wait leaves and half of what is left.
func (l *ladder) logout(j int, reason pdu.LogoutReason, drainSession bool, waited time.Duration) Step {
	begin := time.Now()
	left := l.left()
	timeout := min(l.opts.timeout(), left)
	// What comes before the request (the drain, or the abort) gets what
	// the response wait leaves, at least half of what is left.
	before := max(left-timeout, left/2)
	drain := min(max(l.opts.DrainTimeout, 0), before)
	abort := l.opts.AbortTimeout
	if abort <= 0 {
		abort = timeout
	}
	abort = min(abort, before)
	switch l.opts.InFlight {
	case session.InFlightAbort:
		timeout = min(timeout, left-abort)
	case session.InFlightDrain:
		timeout = min(timeout, left-drain)
	}
	o := session.LogoutOptions{Reason: reason, DrainTimeout: drain, Timeout: timeout, DrainSession: drainSession,
		InFlight: l.opts.InFlight, AbortTimeout: abort}
	// A logout already running on the connection (the target's request,
	// another caller's) has its own deadlines: the caller's bound it.
	bound := begin.Add(l.opts.ConnBound())
	if end := l.deadline.Add(connSlack); end.Before(bound) {
		bound = end
	}
	cctx, cancel := context.WithDeadline(l.ctx, bound)
	lr := l.cs[j].Logout(cctx, o)
	cancel()
	if errors.Is(lr.Err, context.DeadlineExceeded) && l.ctx.Err() == nil {
		lr.Err = fmt.Errorf("%w (no result within %v)", ErrStillLoggingOut, bound.Sub(begin).Round(time.Millisecond))
	}
	cr := classify(lr)
	st := Step{Kind: StepLogout, Reason: cr.Reason, State: cr.State, Responded: cr.Responded, Response: cr.Response,
		Time2Wait: cr.Time2Wait, Time2Retain: cr.Time2Retain, Err: cr.Err, Commands: cr.Commands, Waited: waited,
		At: begin.Sub(l.start), Duration: time.Since(begin)}
	r := &l.res[j]
	steps, took, cmds := r.Steps, r.Duration, r.Commands
	*r = cr
	cmds.add(cr.Commands)
	r.Steps, r.Duration, r.Commands, r.FailedCommands = append(steps, st), took+st.Duration, cmds, cmds.Unknown
	return st
}

// closeFailed is the ladder's last step for a connection whose logout
// failed: it is closed (TCP), as RFC 7143 §8.1.3 sends it to cleanup. A
// connection whose logout someone else runs is left to that logout.
func (l *ladder) closeFailed(j int, st Step) {
	if errors.Is(st.Err, ErrStillLoggingOut) {
		return
	}
	l.close(j, nil)
}

// close closes connection j and records the step.
func (l *ladder) close(j int, why error) {
	begin := time.Now()
	l.cs[j].Close()
	st := Step{Kind: StepClose, State: ConnClosed, Err: why, At: begin.Sub(l.start), Duration: time.Since(begin)}
	r := &l.res[j]
	r.Steps = append(r.Steps, st)
	r.Duration += st.Duration
}

// closeRest closes connections no request went out on: the ladder's last
// step, for which the deadline (or a Time2Wait) left no time.
func (l *ladder) closeRest(idx []int, why error) {
	for _, j := range idx {
		l.close(j, why)
		l.res[j].State, l.res[j].Err = ConnClosed, why
		l.finish(j)
	}
}

// cancelRest leaves the connections a Cancel reached before their turn as
// they are, up and usable, and reports them canceled.
func (l *ladder) cancelRest(idx []int) {
	for _, j := range idx {
		l.res[j].State, l.res[j].Err = ConnCanceled, l.ctx.Err()
		l.finish(j)
	}
}

// closedWithSession records the connections the target closed with the
// session after a reason-0 success; each is already closed locally.
func (l *ladder) closedWithSession(idx []int) {
	for _, j := range idx {
		o := session.LogoutOptions{Reason: pdu.LogoutCloseSession}
		r := l.cs[j].Logout(l.ctx, o) // returns at once: already closed locally
		l.res[j] = ConnResult{CID: l.cs[j].CID(), Reason: pdu.LogoutCloseSession, State: ConnClosedWithSession, Duration: r.Duration}
		l.finish(j)
	}
}

// sleep waits d for a Time2Wait; false if the operation was canceled first.
func (l *ladder) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-l.ctx.Done():
		return false
	}
}

// finish hands connection j's final result to the operation.
func (l *ladder) finish(j int) { l.op.setConn(l.i, j, l.res[j]) }
