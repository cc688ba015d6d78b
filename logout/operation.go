package logout

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
	"go.uber.org/zap"
)

// Strategy chooses which Logout Requests go out.
type Strategy int

const (
	// PerConnection sends a Logout Request on every connection at once:
	// reason 1 (close connection) on each connection of a multi-connection
	// session, reason 0 (close session) where a session has one connection.
	PerConnection Strategy = iota
	// PerSession sends reason 0 on one connection per session; the target
	// closes the others. If it fails, the next connection tries.
	PerSession
)

// String names the strategy.
func (s Strategy) String() string {
	if s == PerSession {
		return "per-session"
	}
	return "per-connection"
}

// Options control a logout operation.
type Options struct {
	Strategy Strategy
	// DrainTimeout is how long commands already running may finish before
	// the Logout Requests go out; 0 fails them at once.
	DrainTimeout time.Duration
	// Timeout bounds the wait for each Logout Response; 0 means 15 s.
	// With DrainTimeout it also bounds the caller's wait for a connection
	// whose logout someone else runs (the target's request, another call):
	// see ConnBound.
	Timeout time.Duration
	// Force closes locally every session that did not log out.
	Force bool
	// Logger gets one line per operation at info and one per connection at
	// debug; nil logs nothing.
	Logger *zap.Logger
	// OnComplete, if set, runs with the result before Wait returns.
	OnComplete func(*Result)
}

// connSlack is what a connection's logout may take past its drain and
// response deadlines: closing the connection after the response.
const connSlack = 500 * time.Millisecond

// ConnBound is the longest the engine waits for one connection's logout:
// DrainTimeout, then Timeout (15 s when 0) for the response, plus half a
// second to close the connection. A logout the engine runs itself ends
// sooner by its own deadlines; the bound matters when the connection's
// logout was already running (the target asked for it, or another caller
// started it), whose deadlines are not the caller's: at the bound the
// connection is reported ConnTimeout with ErrStillLoggingOut, and left to
// that logout.
func (o Options) ConnBound() time.Duration {
	t := o.Timeout
	if t <= 0 {
		t = session.DefaultLogoutTimeout
	}
	return max(o.DrainTimeout, 0) + t + connSlack
}

// bound is the longest an operation of these options takes over sessions
// of at most maxConns connections: PerSession tries the connections of a
// session one after another.
func (o Options) bound(maxConns int) time.Duration {
	n := 1
	if o.Strategy == PerSession {
		n = max(maxConns, 1)
	}
	return time.Duration(n) * o.ConnBound()
}

// AsyncOptions returns base adjusted to answer a target's logout request
// (async event 1) whose Parameter3 is parameter3: the session is logged out
// whole (PerSession), with the drain and response deadlines of
// session.AsyncLogoutDeadlines, the window clamped to maxWait
// (session.MaxAsyncLogoutWait when 0).
func AsyncOptions(base Options, parameter3 uint16, maxWait time.Duration) Options {
	base.Strategy = PerSession
	base.DrainTimeout, base.Timeout = session.AsyncLogoutDeadlines(parameter3, maxWait, base.Timeout)
	return base
}

// ErrStillLoggingOut is the error of a connection whose logout had not
// ended when the caller's wait did: the logout someone else runs (or the
// operation a call joined) goes on, and its outcome is not known yet.
// It is session.ErrLogoutRunning, which a session's own Conn.Logout returns
// in the same case.
var ErrStillLoggingOut = session.ErrLogoutRunning

// Session is what the engine needs of a session. Adapt makes one of a
// *session.Session; tests use fakes.
type Session interface {
	TSIH() uint16
	ISID() [6]byte
	Conns() []Conn
	// Close closes what is left of the session locally and waits for its
	// goroutines.
	Close() error
}

// Conn is one connection the engine logs out.
type Conn interface {
	CID() uint16
	Logout(ctx context.Context, opts session.LogoutOptions) session.LogoutResult
}

type adapted struct{ *session.Session }

func (a adapted) Conns() []Conn {
	cs := a.Session.Conns()
	out := make([]Conn, len(cs))
	for i, c := range cs {
		out[i] = c
	}
	return out
}

// Adapt returns s as a Session of the engine.
func Adapt(s *session.Session) Session { return adapted{s} }

// Operation is a logout in progress. Its methods are safe for concurrent use.
type Operation struct {
	target   string
	done     chan struct{}
	cancel   context.CancelFunc
	total    int
	finished atomic.Int64
	// deadline is when the operation ends at the latest (Options.bound).
	deadline time.Time
	// maxConns is the most connections a session of the operation has.
	maxConns int
	// shared, for an operation Join returned, is the operation it follows.
	shared *Operation

	mu sync.Mutex
	// res is the result so far, the connections whose logout has not
	// ended holding their CID and reason; connDone and sessDone say which
	// have ended. Written under mu while the operation runs.
	res      Result
	connDone [][]bool
	sessDone []bool
	// final is the result Wait returns, set before done is closed.
	final Result
}

// Start logs out of sessions, all to target, and returns at once. With no
// session the operation is already complete with SessionNotFound.
func Start(target string, sessions []Session, opts Options) *Operation {
	ctx, cancel := context.WithCancel(context.Background())
	op := &Operation{target: target, done: make(chan struct{}), cancel: cancel}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	conns := make([][]Conn, len(sessions))
	op.res = Result{Target: target, Sessions: make([]SessionResult, len(sessions))}
	op.connDone = make([][]bool, len(sessions))
	op.sessDone = make([]bool, len(sessions))
	for i, s := range sessions {
		conns[i] = s.Conns()
		op.total += len(conns[i])
		op.maxConns = max(op.maxConns, len(conns[i]))
		sr := SessionResult{TSIH: s.TSIH(), ISID: s.ISID(), Conns: make([]ConnResult, len(conns[i]))}
		reason := pdu.LogoutCloseSession
		if opts.Strategy == PerConnection && len(conns[i]) > 1 {
			reason = pdu.LogoutCloseConnection
		}
		for j, c := range conns[i] {
			sr.Conns[j] = ConnResult{CID: c.CID(), Reason: reason, State: ConnNotAttempted}
		}
		op.res.Sessions[i] = sr
		op.connDone[i] = make([]bool, len(conns[i]))
	}
	op.deadline = time.Now().Add(opts.bound(op.maxConns))
	go op.run(ctx, sessions, conns, opts)
	return op
}

func (op *Operation) run(ctx context.Context, sessions []Session, conns [][]Conn, opts Options) {
	defer op.cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for i, s := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			op.logoutSession(ctx, i, conns[i], opts)
			// Only this goroutine writes the session's result: it reads
			// it without the lock.
			sr := &op.res.Sessions[i]
			loggedOut := sessionLoggedOut(sr)
			forced := false
			if loggedOut {
				s.Close()
			} else if opts.Force {
				s.Close()
				forced = true
			}
			op.mu.Lock()
			sr.LoggedOut, sr.Forced = loggedOut, forced
			op.sessDone[i] = true
			op.mu.Unlock()
			for _, c := range sr.Conns {
				opts.Logger.Debug("connection logout", zap.String("target", op.target), zap.Uint16("tsih", sr.TSIH),
					zap.Uint16("cid", c.CID), zap.Stringer("reason", c.Reason), zap.Stringer("state", c.State),
					zap.String("detail", c.Detail()), zap.Duration("took", c.Duration))
			}
		}()
	}
	wg.Wait()
	op.mu.Lock()
	op.res.Outcome = aggregate(len(sessions), op.res.LoggedOut())
	op.res.Duration = time.Since(start)
	res := op.res.clone()
	op.mu.Unlock()
	opts.Logger.Info("logout from target", zap.String("target", op.target), zap.Stringer("outcome", res.Outcome),
		zap.Int("sessions", len(sessions)), zap.Int("loggedOut", res.LoggedOut()), zap.Duration("took", res.Duration))
	if opts.OnComplete != nil {
		opts.OnComplete(&res)
	}
	op.final = res
	close(op.done)
}

// clone returns a copy of r that shares no slice with it.
func (r *Result) clone() Result {
	c := *r
	c.Sessions = make([]SessionResult, len(r.Sessions))
	for i, sr := range r.Sessions {
		sr.Conns = append([]ConnResult(nil), sr.Conns...)
		c.Sessions[i] = sr
	}
	return c
}

// setConn records connection j of session i's result.
func (op *Operation) setConn(i, j int, cr ConnResult) {
	op.mu.Lock()
	op.res.Sessions[i].Conns[j] = cr
	op.connDone[i][j] = true
	op.mu.Unlock()
	op.finished.Add(1)
}

// logoutSession runs session i's logout by the strategy and fills its
// connections' results.
func (op *Operation) logoutSession(ctx context.Context, i int, cs []Conn, opts Options) {
	sr := &op.res.Sessions[i] // written under op.mu, by this goroutine only
	lo := session.LogoutOptions{DrainTimeout: opts.DrainTimeout, Timeout: opts.Timeout}
	bound := opts.ConnBound()
	one := func(j int, reason pdu.LogoutReason, drainSession bool) {
		o := lo
		o.Reason, o.DrainSession = reason, drainSession
		// A logout already running on the connection (the target's request,
		// another caller's) has its own deadlines: the caller's bound it.
		cctx, cancel := context.WithTimeout(ctx, bound)
		lr := cs[j].Logout(cctx, o)
		cancel()
		if errors.Is(lr.Err, context.DeadlineExceeded) && ctx.Err() == nil {
			lr.Err = fmt.Errorf("%w (no result within %v)", ErrStillLoggingOut, bound)
		}
		op.setConn(i, j, classify(lr))
	}
	if opts.Strategy == PerSession || len(cs) == 1 {
		for j := range cs {
			if j > 0 && sr.Conns[j-1].State.ok() {
				// The session is gone: the target closes the rest with it.
				for k := j; k < len(cs); k++ {
					o := lo
					o.Reason = pdu.LogoutCloseSession
					r := cs[k].Logout(ctx, o) // returns at once: already closed locally
					op.setConn(i, k, ConnResult{CID: cs[k].CID(), Reason: pdu.LogoutCloseSession, State: ConnClosedWithSession, Duration: r.Duration})
				}
				return
			}
			if ctx.Err() != nil && j > 0 {
				op.setConn(i, j, ConnResult{CID: cs[j].CID(), State: ConnCanceled, Err: ctx.Err()})
				continue
			}
			one(j, pdu.LogoutCloseSession, false)
		}
		return
	}
	var wg sync.WaitGroup
	for j := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			one(j, pdu.LogoutCloseConnection, true)
		}()
	}
	wg.Wait()
	op.mu.Lock()
	fixSiblings(sr)
	op.mu.Unlock()
}

// sessionLoggedOut reports whether a session is gone from the target: every
// connection logged out, or one closed the whole session (reason 0, success),
// which takes the others with it whatever they saw.
func sessionLoggedOut(sr *SessionResult) bool {
	all := len(sr.Conns) > 0
	for _, c := range sr.Conns {
		if c.State == ConnLoggedOut && c.Reason == pdu.LogoutCloseSession {
			return true
		}
		all = all && c.State.ok()
	}
	return all
}

// fixSiblings applies RFC 7143 §8.1.3 T8: a connection that dropped after a
// sibling closed the whole session (reason 0, success) went with the
// session. That is success, not a failure.
func fixSiblings(sr *SessionResult) {
	sessionClosed := false
	for _, c := range sr.Conns {
		sessionClosed = sessionClosed || (c.State == ConnLoggedOut && c.Reason == pdu.LogoutCloseSession)
	}
	if !sessionClosed {
		return
	}
	for i := range sr.Conns {
		if st := sr.Conns[i].State; st == ConnReset || st == ConnError {
			sr.Conns[i].State, sr.Conns[i].Err = ConnClosedWithSession, nil
		}
	}
}

// Target returns the name of the target being logged out of.
func (op *Operation) Target() string { return op.target }

// Done is closed when the operation has completed.
func (op *Operation) Done() <-chan struct{} { return op.done }

// Wait waits for the operation to complete and returns its result. The error
// is ctx's if ctx ends first; the outcome itself is in Result (see
// Result.Err).
func (op *Operation) Wait(ctx context.Context) (Result, error) {
	select {
	case <-op.done:
		return op.final, nil
	case <-ctx.Done():
		return Result{}, ctx.Err()
	}
}

// Status reports whether the operation is done and the percentage of
// connections whose logout has finished; the percentage never goes down.
// An operation Join returned reports the progress of the one it follows.
func (op *Operation) Status() (done bool, percent int) {
	select {
	case <-op.done:
		return true, 100
	default:
	}
	src := op
	if op.shared != nil {
		src = op.shared
	}
	if src.total == 0 {
		return false, 0
	}
	p := int(src.finished.Load() * 100 / int64(src.total))
	return false, min(p, 99)
}

// Cancel stops the operation: connections still waiting for a Logout
// Response are closed and reported canceled. It returns at once; Wait
// returns when every connection has been dealt with. Canceling an operation
// Join returned ends that caller's wait only (its connections still logging
// out are reported canceled); the operation it follows goes on.
func (op *Operation) Cancel() { op.cancel() }

// Join returns op for one more caller, whose options are opts: op itself
// if op ends (by its own deadlines) no later than opts would have, else an
// Operation that follows op and completes when op does or at the caller's
// bound (opts.ConnBound(), times the connections of a session of op for
// PerSession), whichever comes first. At the bound its result is op's
// progress so far: sessions whose logout ended as they ended, connections
// still logging out ConnTimeout with ErrStillLoggingOut, and the outcome
// counted from that, so a session is never reported logged out before the
// target answered success. Of opts, the new Operation uses the deadlines,
// Logger and OnComplete (run with its result before its Wait returns); what
// is done (strategy, Force) is op's, and when Join returns op itself opts
// are not used at all.
func (op *Operation) Join(opts Options) *Operation {
	select {
	case <-op.done:
		return op
	default:
	}
	start := time.Now()
	bound := opts.bound(op.maxConns)
	deadline := start.Add(bound)
	if !deadline.Before(op.deadline) {
		return op
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	v := &Operation{target: op.target, done: make(chan struct{}), cancel: cancel, total: op.total,
		deadline: deadline, maxConns: op.maxConns, shared: op}
	go v.follow(ctx, start, bound, opts)
	return v
}

// follow completes v, which Join returned, with its shared operation's
// result or, if ctx ends first, with that operation's progress so far.
func (v *Operation) follow(ctx context.Context, start time.Time, bound time.Duration, opts Options) {
	defer v.cancel()
	op := v.shared
	var res Result
	select {
	case <-op.done:
		res = op.final.clone()
	case <-ctx.Done():
		select {
		case <-op.done:
			res = op.final.clone()
		default:
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				res = op.snapshot(ConnTimeout, fmt.Errorf("%w (the caller's bound, %v)", ErrStillLoggingOut, bound))
			} else {
				res = op.snapshot(ConnCanceled, ctx.Err())
			}
			res.Duration = time.Since(start)
		}
	}
	opts.Logger.Info("logout from target (joined a running logout)", zap.String("target", v.target),
		zap.Stringer("outcome", res.Outcome), zap.Int("sessions", len(res.Sessions)),
		zap.Int("loggedOut", res.LoggedOut()), zap.Duration("took", time.Since(start)))
	if opts.OnComplete != nil {
		opts.OnComplete(&res)
	}
	v.final = res
	close(v.done)
}

// snapshot returns the result so far: connections whose logout has not
// ended get state and err, and a session counts as logged out only if what
// ended says so (a success response).
func (op *Operation) snapshot(state ConnState, err error) Result {
	op.mu.Lock()
	res := op.res.clone()
	for i := range res.Sessions {
		if op.sessDone[i] {
			continue
		}
		sr := &res.Sessions[i]
		for j := range sr.Conns {
			if !op.connDone[i][j] {
				sr.Conns[j].State, sr.Conns[j].Err = state, err
			}
		}
		sr.LoggedOut, sr.Forced = sessionLoggedOut(sr), false
	}
	op.mu.Unlock()
	res.Outcome = aggregate(len(res.Sessions), res.LoggedOut())
	return res
}
