package logout

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
	// A connection whose logout fails is closed (TCP); its siblings are
	// not affected.
	PerConnection Strategy = iota
	// PerSession climbs the escalation ladder per session: reason 0 on one
	// connection, which closes the others with the session; if the target
	// refuses it, once more on the next connection after the refusal's
	// Time2Wait, when that fits in the deadline; if it is still refused or
	// unanswered, reason 1 on each connection still up, at once; a
	// connection whose logout failed, or that the deadline leaves no time
	// for, is closed (TCP).
	PerSession
)

// String names the strategy.
func (s Strategy) String() string {
	if s == PerSession {
		return "per-session"
	}
	return "per-connection"
}

// DefaultDeadline bounds a logout operation when Options.Deadline is 0 (and
// Timeout does not bound it more tightly): open-iscsi's logout_timeout.
const DefaultDeadline = 15 * time.Second

// SessionInfo is what Options.InUse is told of a session.
type SessionInfo struct {
	Target string
	TSIH   uint16
	ISID   [6]byte
	// CIDs are the session's connections still up.
	CIDs []uint16
	// Session is the session itself when it is a *session.Session (Adapt),
	// else nil.
	Session *session.Session
}

// ErrInUse wraps what Options.InUse said of a session that was not logged
// out for it.
var ErrInUse = errors.New("iscsi: session in use, not logged out")

// Options control a logout operation.
type Options struct {
	Strategy Strategy
	// DrainTimeout is how long commands already running may finish before
	// the Logout Requests go out; 0 fails them at once. A step gets at
	// most what the deadline leaves once the response wait is set aside
	// (at least half of it).
	DrainTimeout time.Duration
	// Timeout bounds the wait for each Logout Response; 0 means 15 s. The
	// deadline bounds it too.
	Timeout time.Duration
	// InFlight is what each connection's logout does with the SCSI
	// commands still running (session.InFlightDrain, the zero value: let
	// them finish within DrainTimeout; InFlightAbort: ABORT TASK SET on
	// their LUNs within AbortTimeout, then the logout; InFlightFail: fail
	// them at once). Result.Commands counts how they ended.
	InFlight session.InFlightPolicy
	// AbortTimeout bounds the task management exchanges of InFlightAbort;
	// 0 means Timeout. The deadline bounds it as it bounds the drain.
	AbortTimeout time.Duration
	// Deadline bounds the whole operation: every session's drain, Logout
	// Requests, a wait for Time2Wait and the retry share it. 0 means
	// DefaultDeadline, or less when DrainTimeout and Timeout bound every
	// step of the strategy more tightly (OperationDeadline).
	Deadline time.Duration
	// Force closes locally every session that did not log out, and logs
	// out sessions InUse says are in use.
	Force bool
	// InUse, if set, is asked about each session before any Logout Request
	// of the operation goes out; a session it returns an error for is in
	// use and left as it is (not logged out, its result saying why),
	// unless Force. It runs on the operation's goroutine: keep it quick.
	InUse func(SessionInfo) error
	// Logger gets one line per operation at info and one per connection at
	// debug; nil logs nothing.
	Logger *zap.Logger
	// OnComplete, if set, runs with the result before Wait returns.
	OnComplete func(*Result)

	// requested and parameter3 mark the options of a logout the target
	// asked for (AsyncOptions).
	requested  bool
	parameter3 uint16
}

// connSlack is what a connection's logout may take past its drain and
// response deadlines: closing the connection after the response.
const connSlack = 500 * time.Millisecond

// timeout is the response timeout, 15 s when 0.
func (o Options) timeout() time.Duration {
	if o.Timeout <= 0 {
		return session.DefaultLogoutTimeout
	}
	return o.Timeout
}

// OperationDeadline is how long the operation may take before it ends,
// whatever is still running: Deadline if set, else DefaultDeadline or, if
// shorter, the drain (or the abort, by InFlight) plus a response timeout
// per step of the strategy (one
// for PerConnection; three for PerSession: reason 0, its retry, reason 1).
// Closing the connections at the end may add half a second.
func (o Options) OperationDeadline() time.Duration {
	if o.Deadline > 0 {
		return o.Deadline
	}
	steps := time.Duration(1)
	if o.Strategy == PerSession {
		steps = 3
	}
	return min(DefaultDeadline, o.before()+steps*o.timeout())
}

// before is how long a step may take before its Logout Request goes out,
// by the in-flight policy: the drain, the abort, or nothing.
func (o Options) before() time.Duration {
	switch o.InFlight {
	case session.InFlightAbort:
		if o.AbortTimeout > 0 {
			return o.AbortTimeout
		}
		return o.timeout()
	case session.InFlightFail:
		return 0
	}
	return max(o.DrainTimeout, 0)
}

// ConnBound is the longest the engine waits for one step on a connection:
// DrainTimeout (or the abort's bound, by InFlight), then Timeout (15 s when
// 0) for the response, within the
// operation's deadline, plus half a second to close the connection. A
// logout the engine runs itself ends sooner by its own deadlines; the bound
// matters when the connection's logout was already running (the target
// asked for it, or another caller started it), whose deadlines are not the
// caller's: at the bound the connection is reported ConnTimeout with
// ErrStillLoggingOut, and left to that logout.
func (o Options) ConnBound() time.Duration {
	return min(o.before()+o.timeout(), o.OperationDeadline()) + connSlack
}

// bound is the longest an operation of these options takes.
func (o Options) bound() time.Duration { return o.OperationDeadline() + connSlack }

// AsyncOptions returns base adjusted to answer a target's logout request
// (async event 1) whose Parameter3 is parameter3: the session is logged out
// whole (PerSession), with the drain and response deadlines of
// session.AsyncLogoutDeadlines, the window clamped to maxWait
// (session.MaxAsyncLogoutWait when 0). The operation's deadline is that
// drain plus the response timeout, or base.Deadline if it is set and
// shorter; the result says the target asked (Result.Requested).
func AsyncOptions(base Options, parameter3 uint16, maxWait time.Duration) Options {
	base.Strategy = PerSession
	base.DrainTimeout, base.Timeout = session.AsyncLogoutDeadlines(parameter3, maxWait, base.Timeout)
	window := base.DrainTimeout + base.Timeout
	if base.Deadline <= 0 || base.Deadline > window {
		base.Deadline = window
	}
	base.requested, base.parameter3 = true, parameter3
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
	// Close closes the connection at once (TCP), without a logout.
	Close() error
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

// connector is a session that may have no connection (recovering, failed,
// lost) and can get one to be logged out: Adapt's.
type connector interface {
	ConnectForLogout(ctx context.Context) (*session.Conn, error)
	State() session.SessionState
	Recovery() session.RecoveryInfo
}

// Operation is a logout in progress. Its methods are safe for concurrent use.
type Operation struct {
	target   string
	done     chan struct{}
	cancel   context.CancelFunc
	total    int
	finished atomic.Int64
	// deadline is when the operation ends at the latest (Options.bound).
	deadline time.Time
	// shared, for an operation Join returned, is the operation it follows.
	shared *Operation

	mu sync.Mutex
	// canceled is set by a Cancel that succeeded; sealed once every
	// connection's logout has ended (Cancel is then too late).
	canceled, sealed bool
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
	return start(target, sessions, opts, nil)
}

// start is Start; only, if set, restricts the logout of session 0 to the
// connection with that CID (StartConnection).
func start(target string, sessions []Session, opts Options, only *uint16) *Operation {
	ctx, cancel := context.WithCancel(context.Background())
	op := &Operation{target: target, done: make(chan struct{}), cancel: cancel}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	conns := make([][]Conn, len(sessions))
	deadline := opts.OperationDeadline()
	op.res = Result{Target: target, Sessions: make([]SessionResult, len(sessions)), Deadline: deadline,
		Requested: opts.requested, Parameter3: opts.parameter3}
	op.connDone = make([][]bool, len(sessions))
	op.sessDone = make([]bool, len(sessions))
	plans := make([]plan, len(sessions))
	for i, s := range sessions {
		conns[i] = s.Conns()
		plans[i] = plan{reason: pdu.LogoutCloseSession, ladder: opts.Strategy == PerSession || len(conns[i]) <= 1}
		var state session.SessionState
		if cn, ok := s.(connector); ok {
			state = cn.State()
			// No connection left: one reconnect, then reason 0 on it
			// (reconnect), the connection's result in slot 0.
			switch state {
			case session.SessionRecovering, session.SessionFailed, session.SessionLost:
				plans[i].reconnect = len(conns[i]) == 0 && only == nil
			}
		}
		if only != nil {
			// One connection: reason 1 unless it is the session's last.
			plans[i].ladder = false
			if len(conns[i]) > 1 {
				plans[i].reason = pdu.LogoutCloseConnection
			}
			conns[i] = slices.DeleteFunc(conns[i], func(c Conn) bool { return c.CID() != *only })
		} else if !plans[i].ladder {
			plans[i].reason = pdu.LogoutCloseConnection
		}
		op.total += len(conns[i])
		sr := SessionResult{TSIH: s.TSIH(), ISID: s.ISID(), Conns: make([]ConnResult, len(conns[i])), State: state}
		for j, c := range conns[i] {
			sr.Conns[j] = ConnResult{CID: c.CID(), Reason: plans[i].reason, State: ConnNotAttempted}
		}
		if plans[i].reconnect {
			sr.Conns = []ConnResult{{Reason: pdu.LogoutCloseSession, State: ConnNotAttempted}}
			op.total++
		}
		op.res.Sessions[i] = sr
		op.connDone[i] = make([]bool, len(sr.Conns))
	}
	op.deadline = time.Now().Add(opts.bound())
	go op.run(ctx, sessions, conns, plans, opts)
	return op
}

// StartConnection logs out of one connection, the one of s with the given
// CID: reason 1 (close the connection), or reason 0 if it is the session's
// last connection. The result has the one session with that one connection;
// its LoggedOut says whether the connection logged out, and Force closes
// that connection only (Close of a Session holding only it). No connection
// with that CID: the outcome is SessionNotFound.
func StartConnection(target string, s Session, cid uint16, opts Options) *Operation {
	has := false
	for _, c := range s.Conns() {
		has = has || c.CID() == cid
	}
	if !has {
		return start(target, nil, opts, nil)
	}
	return start(target, []Session{s}, opts, &cid)
}

// plan is how one session is logged out.
type plan struct {
	// ladder: PerSession's escalation ladder; else reason on every
	// connection at once.
	ladder bool
	reason pdu.LogoutReason
	// reconnect: the session has no connection; one is made to log it
	// out (ConnectForLogout).
	reconnect bool
}

// ctxShardSessions is how many sessions share a context under the
// operation's, up to maxCtxShards of them.
const (
	ctxShardSessions = 64
	maxCtxShards     = 256
)

func (op *Operation) run(ctx context.Context, sessions []Session, conns [][]Conn, plans []plan, opts Options) {
	defer op.cancel()
	start := time.Now()
	deadline := start.Add(opts.OperationDeadline())
	// Every session's in-use check comes before any Logout Request.
	inUse := make([]error, len(sessions))
	if opts.InUse != nil {
		for i, s := range sessions {
			info := SessionInfo{Target: op.target, TSIH: s.TSIH(), ISID: s.ISID()}
			for _, c := range conns[i] {
				info.CIDs = append(info.CIDs, c.CID())
			}
			if a, ok := s.(adapted); ok {
				info.Session = a.Session
			}
			inUse[i] = opts.InUse(info)
		}
	}
	// Each connection's logout has a context of its own under ctx: a
	// shard's, not ctx itself, so that thousands of sessions logging out at
	// once do not all register and unregister under ctx's one lock.
	shards := make([]context.Context, min(len(sessions)/ctxShardSessions+1, maxCtxShards))
	for k := range shards {
		var stop context.CancelFunc
		shards[k], stop = context.WithCancel(ctx)
		defer stop()
	}
	var wg sync.WaitGroup
	for i, s := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sr := &op.res.Sessions[i]
			if inUse[i] != nil {
				op.mu.Lock()
				sr.InUse = inUse[i]
				op.mu.Unlock()
			}
			if inUse[i] != nil && !opts.Force {
				for j := range conns[i] {
					op.setConn(i, j, ConnResult{CID: conns[i][j].CID(), Reason: plans[i].reason, State: ConnNotAttempted,
						Err: fmt.Errorf("%w: %w", ErrInUse, inUse[i])})
				}
			} else if plans[i].reconnect && !op.reconnect(ctx, i, s.(connector), conns, deadline) {
				// Unreachable: recorded; nothing to log out.
			} else {
				l := &ladder{op: op, ctx: shards[i%len(shards)], i: i, cs: conns[i], opts: opts, start: start, deadline: deadline}
				l.run(plans[i])
			}
			// Only this goroutine writes the session's result: it reads
			// it without the lock.
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
			// Checked first: thousands of sessions logging out at once would
			// each build the fields for a level that is off.
			for _, c := range sr.Conns {
				if ce := opts.Logger.Check(zap.DebugLevel, "connection logout"); ce != nil {
					ce.Write(zap.String("target", op.target), zap.Uint16("tsih", sr.TSIH),
						zap.Uint16("cid", c.CID), zap.Stringer("reason", c.Reason), zap.Stringer("state", c.State),
						zap.String("detail", c.Detail()), zap.Int("steps", len(c.Steps)), zap.Duration("took", c.Duration))
				}
			}
		}()
	}
	wg.Wait()
	op.mu.Lock()
	op.sealed = true
	op.res.Outcome = aggregate(len(sessions), op.res.LoggedOut())
	if op.canceled {
		op.res.Outcome = Canceled
	}
	op.res.Duration = time.Since(start)
	op.res.count()
	res := op.res.clone()
	op.mu.Unlock()
	opts.Logger.Info("logout from target", zap.String("target", op.target), zap.Stringer("outcome", res.Outcome),
		zap.Int("sessions", len(sessions)), zap.Int("loggedOut", res.LoggedOut()), zap.Duration("took", res.Duration),
		zap.Duration("deadline", res.Deadline))
	if opts.OnComplete != nil {
		opts.OnComplete(&res)
	}
	op.final = res
	close(op.done)
}

// reconnect gives session i, which has no connection, one to be logged out
// on, within half of what is left of the deadline (the logout gets the
// rest). On failure it records the session's one connection result as
// ConnUnreachable, with how long the target may keep the session.
func (op *Operation) reconnect(ctx context.Context, i int, s connector, conns [][]Conn, deadline time.Time) bool {
	begin := time.Now()
	rctx, cancel := context.WithDeadline(ctx, begin.Add(time.Until(deadline)/2))
	c, err := s.ConnectForLogout(rctx)
	cancel()
	if err == nil {
		conns[i] = []Conn{c}
		op.mu.Lock()
		op.res.Sessions[i].Conns[0].CID = c.CID()
		op.mu.Unlock()
		return true
	}
	info := s.Recovery()
	if !info.RetainUntil.IsZero() {
		err = fmt.Errorf("%w; the target may keep the session until %s (Time2Wait %v, Time2Retain %v after its loss)",
			err, info.RetainUntil.Format(time.RFC3339), info.Time2Wait, info.Time2Retain)
	}
	state := ConnUnreachable
	if ctx.Err() != nil {
		state = ConnCanceled
	}
	op.mu.Lock()
	op.res.Sessions[i].RetainUntil = info.RetainUntil
	op.mu.Unlock()
	op.setConn(i, 0, ConnResult{Reason: pdu.LogoutCloseSession, State: state, Err: err, Duration: time.Since(begin)})
	return false
}

// clone returns a copy of r that shares no slice with it.
func (r *Result) clone() Result {
	c := *r
	c.Sessions = make([]SessionResult, len(r.Sessions))
	for i, sr := range r.Sessions {
		sr.Conns = append([]ConnResult(nil), sr.Conns...)
		for j := range sr.Conns {
			sr.Conns[j].Steps = append([]Step(nil), sr.Conns[j].Steps...)
		}
		c.Sessions[i] = sr
	}
	return c
}

// setConn records connection j of session i's final result.
func (op *Operation) setConn(i, j int, cr ConnResult) {
	op.mu.Lock()
	op.res.Sessions[i].Conns[j] = cr
	op.connDone[i][j] = true
	op.mu.Unlock()
	op.finished.Add(1)
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

// Wait waits for the operation to complete and returns its result, whose
// HRESULT is the operation's (IVdsAsync::Wait). The error is ctx's if ctx
// ends first; the outcome itself is in Result (see Result.Err).
func (op *Operation) Wait(ctx context.Context) (Result, error) {
	select {
	case <-op.done:
		return op.final, nil
	case <-ctx.Done():
		return Result{}, ctx.Err()
	}
}

// Status reports the operation's HRESULT and the percentage of connections
// whose logout has ended (IVdsAsync::QueryStatus): HResultOperationPending
// and 0 to 99 while it runs, the outcome's HRESULT and 100 once done. The
// percentage never goes down. An operation Join returned reports the
// progress of the one it follows.
func (op *Operation) Status() (hresult uint32, percent int) {
	select {
	case <-op.done:
		return op.final.HRESULT(), 100
	default:
	}
	src := op
	if op.shared != nil {
		src = op.shared
	}
	if src.total == 0 {
		return HResultOperationPending, 0
	}
	p := int(src.finished.Load() * 100 / int64(src.total))
	return HResultOperationPending, min(p, 99)
}

// Cancel stops the operation (IVdsAsync::Cancel): connections still waiting
// for a Logout Response are closed and reported canceled, those not reached
// yet stay as they are (ConnCanceled), and the operation completes with the
// outcome Canceled. It returns at once, nil when it canceled; Wait returns
// when every connection has been dealt with. Once every connection's logout
// has ended it returns ErrCancelTooLate and changes nothing. Canceling an
// operation Join returned ends that caller's wait only (its connections
// still logging out are reported canceled); the operation it follows goes
// on.
func (op *Operation) Cancel() error {
	op.mu.Lock()
	if op.sealed {
		op.mu.Unlock()
		return ErrCancelTooLate
	}
	op.canceled = true
	op.mu.Unlock()
	op.cancel()
	return nil
}

// Join returns op for one more caller, whose options are opts: op itself
// if op ends (by its own deadline) no later than opts would have, else an
// Operation that follows op and completes when op does or at the caller's
// bound (opts.OperationDeadline(), plus half a second), whichever comes
// first. At the bound its result is op's progress so far: sessions whose
// logout ended as they ended, connections still logging out ConnTimeout
// with ErrStillLoggingOut, and the outcome counted from that, so a session
// is never reported logged out before the target answered success. Of
// opts, the new Operation uses the deadline, Logger and OnComplete (run
// with its result before its Wait returns); what is done (strategy, Force)
// is op's, and when Join returns op itself opts are not used at all.
func (op *Operation) Join(opts Options) *Operation {
	select {
	case <-op.done:
		return op
	default:
	}
	start := time.Now()
	bound := opts.bound()
	deadline := start.Add(bound)
	if !deadline.Before(op.deadline) {
		return op
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	v := &Operation{target: op.target, done: make(chan struct{}), cancel: cancel, total: op.total,
		deadline: deadline, shared: op}
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
	v.mu.Lock()
	v.sealed = true
	if v.canceled {
		// A Cancel that succeeded decides the outcome, as in run.
		res.Outcome = Canceled
	}
	v.mu.Unlock()
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
	res.count()
	return res
}
