package logout

import (
	"context"
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
	Timeout time.Duration
	// Force closes locally every session that did not log out.
	Force bool
	// Logger gets one line per operation at info and one per connection at
	// debug; nil logs nothing.
	Logger *zap.Logger
	// OnComplete, if set, runs with the result before Wait returns.
	OnComplete func(*Result)
}

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
	res      Result
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
	for i, s := range sessions {
		conns[i] = s.Conns()
		op.total += len(conns[i])
	}
	go op.run(ctx, sessions, conns, opts)
	return op
}

func (op *Operation) run(ctx context.Context, sessions []Session, conns [][]Conn, opts Options) {
	defer op.cancel()
	start := time.Now()
	res := Result{Target: op.target, Sessions: make([]SessionResult, len(sessions))}
	var wg sync.WaitGroup
	for i, s := range sessions {
		res.Sessions[i] = SessionResult{TSIH: s.TSIH(), ISID: s.ISID(), Conns: make([]ConnResult, len(conns[i]))}
		wg.Add(1)
		go func(sr *SessionResult, s Session, cs []Conn) {
			defer wg.Done()
			op.logoutSession(ctx, sr, cs, opts)
			sr.LoggedOut = sessionLoggedOut(sr)
			if sr.LoggedOut {
				s.Close()
			} else if opts.Force {
				s.Close()
				sr.Forced = true
			}
			for _, c := range sr.Conns {
				opts.Logger.Debug("connection logout", zap.String("target", op.target), zap.Uint16("tsih", sr.TSIH),
					zap.Uint16("cid", c.CID), zap.Uint8("reason", c.Reason), zap.Stringer("state", c.State),
					zap.String("detail", c.Detail()), zap.Duration("took", c.Duration))
			}
		}(&res.Sessions[i], s, conns[i])
	}
	wg.Wait()
	res.Outcome = aggregate(len(sessions), res.LoggedOut())
	res.Duration = time.Since(start)
	opts.Logger.Info("logout from target", zap.String("target", op.target), zap.Stringer("outcome", res.Outcome),
		zap.Int("sessions", len(sessions)), zap.Int("loggedOut", res.LoggedOut()), zap.Duration("took", res.Duration))
	if opts.OnComplete != nil {
		opts.OnComplete(&res)
	}
	op.res = res
	close(op.done)
}

// logoutSession runs one session's logout by the strategy and fills sr.Conns.
func (op *Operation) logoutSession(ctx context.Context, sr *SessionResult, cs []Conn, opts Options) {
	lo := session.LogoutOptions{DrainTimeout: opts.DrainTimeout, Timeout: opts.Timeout}
	one := func(i int, reason uint8, drainSession bool) {
		o := lo
		o.Reason, o.DrainSession = reason, drainSession
		sr.Conns[i] = classify(cs[i].Logout(ctx, o))
		op.finished.Add(1)
	}
	if opts.Strategy == PerSession || len(cs) == 1 {
		for i := range cs {
			if i > 0 && sr.Conns[i-1].State.ok() {
				// The session is gone: the target closes the rest with it.
				for j := i; j < len(cs); j++ {
					o := lo
					o.Reason = pdu.LogoutCloseSession
					r := cs[j].Logout(ctx, o) // returns at once: already closed locally
					sr.Conns[j] = ConnResult{CID: cs[j].CID(), Reason: pdu.LogoutCloseSession, State: ConnClosedWithSession, Duration: r.Duration}
					op.finished.Add(1)
				}
				return
			}
			if ctx.Err() != nil && i > 0 {
				sr.Conns[i] = ConnResult{CID: cs[i].CID(), State: ConnCanceled, Err: ctx.Err()}
				op.finished.Add(1)
				continue
			}
			one(i, pdu.LogoutCloseSession, false)
		}
		return
	}
	var wg sync.WaitGroup
	for i := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			one(i, pdu.LogoutCloseConnection, true)
		}()
	}
	wg.Wait()
	fixSiblings(sr)
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
		return op.res, nil
	case <-ctx.Done():
		return Result{}, ctx.Err()
	}
}

// Status reports whether the operation is done and the percentage of
// connections whose logout has finished; the percentage never goes down.
func (op *Operation) Status() (done bool, percent int) {
	select {
	case <-op.done:
		return true, 100
	default:
	}
	if op.total == 0 {
		return false, 0
	}
	p := int(op.finished.Load() * 100 / int64(op.total))
	return false, min(p, 99)
}

// Cancel stops the operation: connections still waiting for a Logout
// Response are closed and reported canceled. It returns at once; Wait
// returns when every connection has been dealt with.
func (op *Operation) Cancel() { op.cancel() }
