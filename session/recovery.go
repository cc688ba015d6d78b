package session

// ERL 0 session recovery (RFC 7143 §6.3.5, §7.1): when the last connection
// of a session ends without a logout, the session logs in again with its
// own ISID and TSIH 0, which makes the target close what it kept of the old
// session (its tasks end there), and goes on as the same *Session with a new
// TSIH and new connections. Commands that failed with the loss, and commands
// submitted meanwhile, wait for it and are sent again (executeRecovering;
// for Submit's calls, submitRecovering, lostCall and resend).

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"go.uber.org/zap"
)

// DefaultReplacementTimeout is RecoveryConfig.ReplacementTimeout when 0:
// open-iscsi's replacement_timeout.
const DefaultReplacementTimeout = 120 * time.Second

// Backoff between reconnect attempts, when RecoveryConfig leaves it 0.
const (
	DefaultMinBackoff = 50 * time.Millisecond
	DefaultMaxBackoff = 500 * time.Millisecond
)

var (
	// ErrSessionFailed fails the commands of a session whose recovery gave
	// up: the replacement timeout passed before the target could be
	// reached again, or a logout stopped the recovery. A command that
	// had been sent when the connection was lost matches
	// ErrOutcomeUnknown too; one never sent matches ErrNotSent.
	ErrSessionFailed = errors.New("iscsi: session failed: its recovery gave up")
	// ErrSessionRecovering fails a command at once while the session
	// recovers, when RecoveryConfig.ReplacementTimeout is negative (fail
	// at once).
	ErrSessionRecovering = errors.New("iscsi: session is recovering (replacement timeout negative: commands fail at once)")
	// ErrTargetUnreachable is why a session without a connection could not
	// be logged out: the reconnect to send the Logout Request failed.
	ErrTargetUnreachable = errors.New("iscsi: target unreachable")
	// errRecoveryStopped is the last error of a recovery a logout stopped.
	errRecoveryStopped = errors.New("iscsi: recovery stopped (logout)")
)

// RecoveryConfig turns on ERL 0 session recovery (Config.Recovery).
//
// On the loss of its last connection without a logout (a reset, a dead
// peer, the target restarting; not Close, not a logout), the session waits
// the negotiated DefaultTime2Wait, then reconnects with capped exponential
// backoff and jitter and reinstates itself: a leading login with the same
// ISID and TSIH 0 (RFC 7143 §6.3.5), redirects and CHAP as the first login,
// after which the target has closed the old session and ended its tasks.
// The Session stays the same object, with a new TSIH and as many
// connections as it had. While it recovers, Session.State is
// SessionRecovering; if the target cannot be reached before the
// replacement timeout, SessionFailed.
//
// Commands (Session.Execute, and calls of Session.Submit) that failed
// because the connection was lost, and commands submitted while the
// session recovers, wait for the reinstatement (within their context and
// the replacement timeout) and are sent again on the new session. A write is retried too: after the
// reinstatement the old session's tasks are gone at the target, so the
// write sent again cannot be overtaken by the old one; NoRetryWrites turns
// that off. A command that ended with a SCSI status, a Reject, its own
// context, a logout or Close is never retried.
type RecoveryConfig struct {
	// ReplacementTimeout is how long, from the loss of the last
	// connection, the session tries to reinstate itself and commands wait
	// for it (open-iscsi's replacement_timeout); after it the session is
	// SessionFailed and its commands fail with ErrSessionFailed. 0 means
	// DefaultReplacementTimeout (120 s). Negative means fail at once:
	// commands failed by the loss, and those submitted while the session
	// recovers, fail at once with ErrSessionRecovering (and their own
	// error), while the session still reinstates itself in the background
	// within DefaultReplacementTimeout, for the commands after it.
	ReplacementTimeout time.Duration
	// NoRetryWrites leaves a write in flight at the loss failed with
	// ErrOutcomeUnknown, as without recovery, instead of sending it again
	// after the reinstatement. Writes never sent are sent either way.
	NoRetryWrites bool
	// MinBackoff and MaxBackoff bound the wait between reconnect
	// attempts: MinBackoff doubling per attempt up to MaxBackoff, each
	// drawn at random in its upper half (jitter). 0 means
	// DefaultMinBackoff (50 ms) and DefaultMaxBackoff (500 ms).
	MinBackoff, MaxBackoff time.Duration
}

func (r *RecoveryConfig) failFast() bool { return r.ReplacementTimeout < 0 }

// window is how long recovery tries.
func (r *RecoveryConfig) window() time.Duration {
	if r.ReplacementTimeout > 0 {
		return r.ReplacementTimeout
	}
	return DefaultReplacementTimeout
}

// backoff is the wait before attempt n+1 after attempt n (n ≥ 1) failed.
func (r *RecoveryConfig) backoff(n int) time.Duration {
	lo, hi := r.MinBackoff, r.MaxBackoff
	if lo <= 0 {
		lo = DefaultMinBackoff
	}
	if hi <= 0 {
		hi = DefaultMaxBackoff
	}
	d := lo
	for i := 1; i < n && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	return d/2 + rand.N(d/2+1)
}

// RecoveryInfo is what a session's recovery has done, for
// Session.Recovery and StateEvent.
type RecoveryInfo struct {
	// State is the session's state.
	State SessionState
	// Since is when the last connection was lost (zero if never), and
	// Cause why it ended.
	Since time.Time
	Cause error
	// Attempts counts the reconnect attempts of the current (or last)
	// recovery; LastErr is the last one's error, NextTry when the next
	// one starts (while recovering), Deadline when recovery gives up.
	Attempts int
	LastErr  error
	NextTry  time.Time
	Deadline time.Time
	// Reconnects counts the reinstatements in the session's life;
	// Retries the commands sent again after one.
	Reconnects int
	Retries    uint64
	// Time2Wait and Time2Retain are the negotiated DefaultTime2Wait and
	// DefaultTime2Retain; RetainUntil (Since + both) is when the target
	// has surely dropped what it kept of the session after the loss.
	Time2Wait, Time2Retain time.Duration
	RetainUntil            time.Time
}

// StateEvent is one change of a session's state (Config.OnState).
type StateEvent struct {
	From, To SessionState
	At       time.Time
	// TSIH is the session's TSIH at the change (the new one once up
	// again after a reinstatement).
	TSIH     uint16
	Recovery RecoveryInfo
}

// recovery is a session's recovery bookkeeping, under s.mu.
type recovery struct {
	since      time.Time
	cause      error
	attempts   int
	lastErr    error
	nextTry    time.Time
	deadline   time.Time
	reconnects int
	retries    uint64
	// gen counts reinstatements: a command that saw gen change knows the
	// old session's tasks are gone at the target.
	gen uint64
	// want is how many connections a reinstatement brings back: the most
	// the session had, less those logged out or closed on purpose.
	want int
	// off is set once recovery must not start again (StopRecovery, Close).
	off bool
	// run is the recovery running, nil if none.
	run *recoveryRun
	// changed is closed and replaced at every state change and every
	// connection that leaves the session.
	changed chan struct{}
	// t2w and t2r are the current (or last) recovery's Time2Wait and
	// Time2Retain: the negotiated defaults, or what the target's Async
	// Message announcing the drop said (dropT2W, dropT2R, set while
	// dropping is, for the recovery that drop starts).
	t2w, t2r         time.Duration
	dropping         bool
	dropT2W, dropT2R time.Duration
}

// recoveryRun is one recovery's goroutine: cancel stops it, done is closed
// when it has returned.
type recoveryRun struct {
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

// State returns the session's state.
func (s *Session) State() SessionState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

// Recovery returns what the session's recovery has done so far.
func (s *Session) Recovery() RecoveryInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.recoveryLocked()
}

func (s *Session) recoveryLocked() RecoveryInfo {
	r := &s.rec
	ri := RecoveryInfo{State: s.state, Since: r.since, Cause: r.cause, Attempts: r.attempts, LastErr: r.lastErr,
		Deadline: r.deadline, Reconnects: r.reconnects, Retries: r.retries,
		Time2Wait: time.Duration(s.params.DefaultTime2Wait) * time.Second, Time2Retain: time.Duration(s.params.DefaultTime2Retain) * time.Second}
	if !r.since.IsZero() {
		ri.Time2Wait, ri.Time2Retain = r.t2w, r.t2r
	}
	if s.state == sessionRecovering {
		ri.NextTry = r.nextTry
	}
	if !r.since.IsZero() {
		ri.RetainUntil = r.since.Add(ri.Time2Wait + ri.Time2Retain)
	}
	return ri
}

// notifyLocked wakes whoever waits for the session to change.
func (s *Session) notifyLocked() {
	if s.rec.changed != nil {
		close(s.rec.changed)
	}
	s.rec.changed = make(chan struct{})
}

// flushEvents delivers the state changes queued by moveTo to
// Config.OnState, in order, without s.mu. One goroutine delivers at a time;
// a change made meanwhile (by the callback itself, say) is delivered by it
// too.
func (s *Session) flushEvents() {
	if s.cfg.OnState == nil {
		return
	}
	s.mu.Lock()
	if s.delivering {
		s.mu.Unlock()
		return
	}
	s.delivering = true
	for len(s.events) > 0 {
		evs := s.events
		s.events = nil
		s.mu.Unlock()
		for _, ev := range evs {
			s.cfg.OnState(s, ev)
		}
		s.mu.Lock()
	}
	s.delivering = false
	s.mu.Unlock()
}

// endLocked closes ended once.
func (s *Session) endLocked() {
	select {
	case <-s.ended:
	default:
		close(s.ended)
	}
}

// recoverable reports whether the end of c starts a recovery: the session
// has one configured and not stopped, c ended without a logout or Close
// (err is c's error, own whether a logout ran on it), and no logout runs on
// the session's other connections. Called with s.mu held.
func (s *Session) recoverable(c *Conn, err error, own bool) bool {
	if s.cfg.Recovery == nil || s.rec.off || s.state != sessionUp || own || c.logoutAsked.Load() ||
		c.state() == connLoggedOut || errors.Is(err, ErrClosed) || errors.Is(err, ErrLoggedOut) {
		return false
	}
	for _, o := range s.conns {
		// A logout runs on another connection (reason 0 closes this one
		// at the target): the end is the logout's, not a loss.
		if st := o.state(); st != connUp && st != connClosed {
			return false
		}
	}
	return true
}

// startRecoveryLocked moves the session to recovering and starts the
// recovery's goroutine. Called with s.mu held.
func (s *Session) startRecoveryLocked(cause error) {
	now := time.Now()
	deadline := now.Add(s.cfg.Recovery.window())
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	r := &recoveryRun{ctx: ctx, cancel: cancel, done: make(chan struct{})}
	s.rec.since, s.rec.cause, s.rec.attempts, s.rec.lastErr, s.rec.deadline, s.rec.run = now, cause, 0, nil, deadline, r
	s.rec.t2w = time.Duration(s.params.DefaultTime2Wait) * time.Second
	s.rec.t2r = time.Duration(s.params.DefaultTime2Retain) * time.Second
	if s.rec.dropping {
		// The target announced the drop (async event 2 or 3) with its
		// own Time2Wait and Time2Retain for it (RFC 7143 §11.9.1).
		s.rec.t2w, s.rec.t2r = s.rec.dropT2W, s.rec.dropT2R
		s.rec.dropping = false
	}
	s.rec.nextTry = now.Add(s.rec.t2w)
	s.moveTo(sessionRecovering)
	s.wg.Add(1)
	go s.recoverLoop(r)
}

// recoverLoop reconnects until the session is reinstated, the deadline
// passes (the session fails) or the recovery is stopped.
func (s *Session) recoverLoop(r *recoveryRun) {
	defer s.wg.Done()
	defer close(r.done)
	defer r.cancel()
	cfg := s.cfg.Recovery
	s.mu.Lock()
	wait := time.Until(s.rec.nextTry)
	s.mu.Unlock()
	// DefaultTime2Wait, or the Time2Wait of the target's Async Message
	// announcing the drop, is the least time before a reconnect (§13.15,
	// §11.9.1); the replacement timeout bounds it (r.ctx). Time2Retain
	// does not end the recovery: it is how long the target keeps the old
	// session's state, which an ERL 0 reinstatement ends anyway (its
	// commands go again as new tasks), and a login after it simply opens
	// the session anew. It is reported (RecoveryInfo.RetainUntil) for a
	// logout that cannot reach the target.
	if !sleepCtx(r.ctx, wait) {
		s.recoveryEnded(r)
		return
	}
	for attempt := 1; ; attempt++ {
		s.mu.Lock()
		if s.state != sessionRecovering {
			s.mu.Unlock()
			return
		}
		s.rec.attempts = attempt
		// Each attempt starts at the configured portal: a redirect is
		// followed anew.
		s.portal = s.cfg.Portal
		s.mu.Unlock()
		c, err := s.connect(r.ctx, 0, true)
		if err == nil {
			s.reinstated(r, c)
			return
		}
		d := cfg.backoff(attempt)
		s.mu.Lock()
		s.rec.lastErr = err
		s.rec.nextTry = time.Now().Add(d)
		s.mu.Unlock()
		s.log.Info("session recovery: reconnect failed", zap.Int("attempt", attempt), zap.Error(err),
			zap.Duration("nextIn", d))
		if r.ctx.Err() != nil || !sleepCtx(r.ctx, d) {
			s.recoveryEnded(r)
			return
		}
	}
}

// recoveryEnded fails a session whose recovery ran out of time. A
// recovery that was stopped (Close, StopRecovery) leaves the state to the
// one that stopped it.
func (s *Session) recoveryEnded(r *recoveryRun) {
	if !errors.Is(r.ctx.Err(), context.DeadlineExceeded) {
		return
	}
	s.mu.Lock()
	if s.state == sessionRecovering {
		if s.rec.lastErr == nil {
			s.rec.lastErr = fmt.Errorf("replacement timeout (%v) passed", s.cfg.Recovery.window())
		}
		s.moveTo(sessionFailed)
		s.endLocked()
	}
	s.rec.run = nil
	s.mu.Unlock()
	s.flushEvents()
}

// reinstated makes c, the leading connection of the reinstated session,
// the session's, and brings back the other connections it had.
func (s *Session) reinstated(r *recoveryRun, c *Conn) {
	s.mu.Lock()
	if s.state != sessionRecovering || r.ctx.Err() != nil {
		// Close or a logout stopped the recovery while it logged in.
		s.mu.Unlock()
		c.Close()
		return
	}
	s.conns = []*Conn{c}
	s.all = append(slices.DeleteFunc(s.all, connExited), c)
	s.nextCID = 1
	s.rec.gen++
	s.rec.reconnects++
	s.rec.lastErr = nil
	s.rec.run = nil
	want := s.rec.want
	s.moveTo(sessionUp)
	// Started under mu: a Close that follows must find its goroutines
	// counted (c.wg), or its Wait races their Add.
	c.start()
	s.mu.Unlock()
	s.flushEvents()
	s.log.Info("session reinstated", zap.Uint16("tsih", s.TSIH()), zap.Int("connections", want))
	for i := 1; i < want; i++ {
		if _, err := s.AddConnection(r.ctx); err != nil {
			s.log.Info("session recovery: connection not added back", zap.Int("of", want), zap.Error(err))
			break
		}
	}
}

// connExited reports a connection whose goroutines have ended.
func connExited(o *Conn) bool {
	select {
	case <-o.exited:
		return true
	default:
		return false
	}
}

// sleepCtx waits d, or less if ctx ends first (false).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// StopRecovery stops the session's recovery for good: a later loss of its
// last connection leaves it lost, and a recovery running ends (a login it
// has under way is abandoned) before StopRecovery returns; a session that
// was recovering is then SessionFailed. A logout calls it first, so that the
// recovery and the logout do not race. It must not be called from
// Config.OnState.
func (s *Session) StopRecovery() {
	s.mu.Lock()
	s.rec.off = true
	r := s.rec.run
	if r != nil {
		r.cancel()
	}
	s.mu.Unlock()
	if r != nil {
		<-r.done
	}
	s.mu.Lock()
	if s.state == sessionRecovering {
		s.rec.lastErr = errRecoveryStopped
		s.moveTo(sessionFailed)
		s.endLocked()
	}
	s.rec.run = nil
	s.mu.Unlock()
	s.flushEvents()
}

// ConnectForLogout gives a session with no connection left (lost,
// recovering or failed) one, to log it out, so that the target really drops
// it rather than keeping it until Time2Retain: it stops the recovery
// (StopRecovery), then logs in once, within ctx, with the session's ISID and
// TSIH 0, which makes the target close what it kept of the session (RFC 7143
// §6.3.5); a Logout on the connection returned then ends the new session.
// The session stays in its state (it takes no command) until that logout
// succeeds. A session with a connection returns it; a session closed or
// logged out returns ErrClosed. A failed login returns an error wrapping
// ErrTargetUnreachable and what the login met.
func (s *Session) ConnectForLogout(ctx context.Context) (*Conn, error) {
	s.StopRecovery()
	s.mu.Lock()
	switch {
	case s.state == sessionClosed || s.state == sessionLoggedOut:
		s.mu.Unlock()
		return nil, ErrClosed
	case len(s.conns) > 0:
		c := s.conns[0]
		s.mu.Unlock()
		return c, nil
	}
	s.portal = s.cfg.Portal
	s.mu.Unlock()
	c, err := s.connect(ctx, 0, true)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTargetUnreachable, err)
	}
	s.mu.Lock()
	if s.state == sessionClosed || s.state == sessionLoggedOut {
		s.mu.Unlock()
		c.Close()
		return nil, ErrClosed
	}
	s.conns = []*Conn{c}
	s.all = append(slices.DeleteFunc(s.all, connExited), c)
	s.nextCID = 1
	c.start() // under mu, as in reinstated
	s.mu.Unlock()
	s.log.Info("reconnected to log the session out", zap.Uint16("tsih", s.TSIH()))
	return c, nil
}

// executeRecovering is Session.Execute with recovery: a command that
// failed because the session lost its last connection, or that finds the
// session recovering, waits for the reinstatement and goes again. It
// fills res as Conn.execute does.
func (s *Session) executeRecovering(ctx context.Context, cmd *Command, res *Result) error {
	var last error
	ua := 0
	for {
		c, gen, err := s.connForCommand(ctx, last)
		if err != nil {
			return err
		}
		err = c.execute(ctx, cmd, res)
		if err == nil {
			return nil
		}
		if gen > 0 && ua < unitAttentionRetries && reinstatementUA(err) {
			// The target reports the reinstatement itself (I_T nexus
			// loss, power on or reset: ASC 29h) on each LUN's first
			// command; a command that meets UNIT ATTENTION was not
			// performed (SAM-5 §5.14), so it goes again.
			ua++
			continue
		}
		if !s.retryAfterLoss(ctx, c, gen, cmd, err) {
			return err
		}
		last = err
		s.mu.Lock()
		s.rec.retries++
		s.mu.Unlock()
	}
}

// reinstatementUA reports a UNIT ATTENTION with ASC 29h.
func reinstatementUA(err error) bool {
	var se *SCSIError
	if !IsUnitAttention(err) || !errors.As(err, &se) {
		return false
	}
	asc, _, ok := se.ASC()
	return ok && asc == 0x29
}

// connForCommand returns a connection for a command, waiting while the
// session recovers; gen is the reinstatements so far. last is the error of
// the command's previous attempt, kept in the error returned.
func (s *Session) connForCommand(ctx context.Context, last error) (*Conn, uint64, error) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		s.mu.Lock()
		st, gen, ch, deadline := s.state, s.rec.gen, s.rec.changed, s.rec.deadline
		lastErr := s.rec.lastErr
		s.mu.Unlock()
		switch st {
		case sessionUp:
			c, err := s.pickConn()
			if err == nil {
				return c, gen, nil
			}
			if !errors.Is(err, ErrClosed) && !s.connsEnding() {
				return nil, 0, withLast(err, last)
			}
			// The connections ended as we looked (none logging out):
			// the session is about to hear of it and change state.
		case sessionRecovering:
			if s.cfg.Recovery.failFast() {
				return nil, 0, withLast(ErrSessionRecovering, last)
			}
		case sessionFailed:
			return nil, 0, withLast(fmt.Errorf("%w (%v)", ErrSessionFailed, lastErr), last)
		default:
			if last != nil {
				return nil, 0, last
			}
			_, err := s.pickConn()
			if err == nil {
				err = ErrClosed
			}
			return nil, 0, err
		}
		if timer == nil {
			timer = time.NewTimer(max(time.Until(deadline), time.Millisecond))
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, 0, withLast(fmt.Errorf("%w: waiting for the session's recovery: %w", ErrNotSent, ctx.Err()), last)
		case <-timer.C:
			// The recovery fails at its deadline; wait for it to say so.
			timer.Reset(10 * time.Millisecond)
		}
	}
}

// connsEnding reports whether every connection of the session that takes
// no command has ended without a logout: the session hears of it next.
func (s *Session) connsEnding() bool {
	for _, c := range s.Conns() {
		if c.Active() {
			continue
		}
		c.mu.Lock()
		own := c.ownLogout
		c.mu.Unlock()
		if c.state() != connClosed || own || c.logoutAsked.Load() {
			return false
		}
	}
	return true
}

// withLast is err, with the error of the command's previous attempt if it
// had one: a command sent before the loss keeps its ErrOutcomeUnknown.
// Without one, err says the command was never sent.
func withLast(err, last error) error {
	if last == nil {
		if errors.Is(err, ErrNotSent) {
			return err
		}
		return fmt.Errorf("%w: %w", err, ErrNotSent)
	}
	return fmt.Errorf("%w; the command's first attempt: %w", err, last)
}

// retryAfterLoss reports whether cmd, which failed with err on c, goes
// again: its failure was c's loss, the last connection of the session,
// which recovers or has recovered since the command started (gen).
func (s *Session) retryAfterLoss(ctx context.Context, c *Conn, gen uint64, cmd *Command, err error) bool {
	if ctx.Err() != nil || !lossError(err) {
		return false
	}
	if len(cmd.Write) > 0 && errors.Is(err, ErrOutcomeUnknown) && s.cfg.Recovery.NoRetryWrites {
		return false
	}
	for {
		s.mu.Lock()
		in := slices.Contains(s.conns, c)
		st, g, ch := s.state, s.rec.gen, s.rec.changed
		s.mu.Unlock()
		if !in {
			return st == sessionRecovering || st == sessionFailed || (st == sessionUp && g != gen)
		}
		if c.Err() == nil {
			// The connection is up: the command failed on its own.
			return false
		}
		// c has ended; the session hears of it next (connEnded, right
		// after the connection failed its tasks).
		t := time.NewTimer(connEndedBound)
		select {
		case <-ch:
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		if ctx.Err() != nil {
			return false
		}
	}
}

// connEndedBound bounds retryAfterLoss's wait for the session to hear of
// a connection's end, which follows at once; each wait is a fresh look.
const connEndedBound = time.Second

// lossError reports an error a command may have met because its connection
// was lost: its outcome unknown or never sent, but not a SCSI status, a
// Reject, a logout or an abort.
func lossError(err error) bool {
	var se *SCSIError
	var rj *RejectError
	switch {
	case errors.As(err, &se), errors.As(err, &rj),
		errors.Is(err, ErrLoggedOut), errors.Is(err, errLoggingOut), errors.Is(err, ErrAborted):
		return false
	}
	return errors.Is(err, ErrOutcomeUnknown) || errors.Is(err, ErrNotSent)
}

// submitRecovering is Session.Submit with recovery. On the steady path it
// is pickConn and the send, with the session's reinstatement count read
// under the same lock: nothing allocated. A call no connection takes now
// waits for the session's recovery on a goroutine (resend), or fails at
// once when it cannot wait.
func (s *Session) submitRecovering(call *Call) error {
	c, gen, err := s.connGen()
	if err == nil {
		call.sess, call.gen = s, gen
		if submitPickedHook != nil {
			submitPickedHook(c)
		}
		// A connection that ended since the pick: the call waits for
		// what follows (connsEnding, below).
		if err = c.submitCall(call); err == nil {
			return nil
		}
	}
	call.sess = s
	s.mu.Lock()
	st, lastErr := s.state, s.rec.lastErr
	s.mu.Unlock()
	switch {
	case st == sessionRecovering && s.cfg.Recovery.failFast():
		return withLast(ErrSessionRecovering, nil)
	case st == sessionRecovering, st == sessionUp && s.connsEnding():
		// The session recovers, or is about to hear its connections
		// ended: the call waits for what follows.
		s.retryCall(call, nil, nil)
		return nil
	case st == sessionFailed:
		return withLast(fmt.Errorf("%w (%v)", ErrSessionFailed, lastErr), nil)
	}
	return err
}

// connGen is pickConn, with the session's reinstatements so far read under
// the same lock.
func (s *Session) connGen() (*Conn, uint64, error) {
	s.mu.Lock()
	conns, gen := s.conns, s.rec.gen
	loggedOut := s.state == sessionLoggedOut
	s.mu.Unlock()
	n := len(conns)
	if n == 0 {
		if loggedOut {
			return nil, 0, errLoggingOut
		}
		return nil, 0, ErrClosed
	}
	start := int(s.rr.Add(1))
	for i := 0; i < n; i++ {
		if c := conns[(start+i)%n]; c.Active() {
			return c, gen, nil
		}
	}
	return nil, 0, errLoggingOut
}

// lostCall takes call, submitted with Session.Submit, which failed on c
// without its status (call.Err set), to be sent again after the
// reinstatement, if its error is one a loss causes and the policy allows
// it; it reports whether it took it (Done then runs later). It runs on the
// goroutine that delivers the call's end (deliverLate): the decision,
// which waits for the session to hear of c's end, is made on another.
func (s *Session) lostCall(c *Conn, call *Call) bool {
	err := call.Err
	if !lossError(err) || errors.Is(err, errCanceled) {
		return false
	}
	if len(call.Cmd.Write) > 0 && errors.Is(err, ErrOutcomeUnknown) && s.cfg.Recovery.NoRetryWrites {
		return false
	}
	s.retryCall(call, err, c)
	return true
}

// retryUA sends call again when it met the UNIT ATTENTION with which the
// target reports a reinstatement (see executeRecovering): the command was
// not performed. It runs on the reader that completed the call and reports
// whether it took the call (Done then runs later).
func (s *Session) retryUA(call *Call) bool {
	if call.gen == 0 || int(call.ua) >= unitAttentionRetries || !reinstatementUA(call.Err) {
		return false
	}
	call.ua++
	call.Err, call.Result = nil, Result{}
	c, gen, err := s.connGen()
	if err == nil {
		call.gen = gen
		if err = c.submitCall(call); err == nil {
			return true
		}
	}
	s.retryCall(call, nil, nil)
	return true
}

// retryCall sends call again on a goroutine of the session (resend), or,
// once the session is closed, ends it at once with last (or ErrClosed).
// lost is the connection whose loss failed the call with last, nil for a
// call that was not sent.
func (s *Session) retryCall(call *Call, last error, lost *Conn) {
	s.mu.Lock()
	if s.state == sessionClosed {
		// Close waits for the session's goroutines: start no more.
		s.mu.Unlock()
		call.Err = withLast(ErrClosed, last)
		call.Done(call)
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go s.resend(call, last, lost)
}

// resend is retryCall's goroutine: it decides whether a call the loss of
// lost failed goes again (retryAfterLoss, as Execute), then waits for the
// session to be up again (connForCommand: within the replacement timeout)
// and sends the call; a call that cannot go runs its Done here.
func (s *Session) resend(call *Call, last error, lost *Conn) {
	defer s.wg.Done()
	ctx := context.Background()
	if lost != nil {
		if !s.retryAfterLoss(ctx, lost, call.gen, &call.Cmd, last) {
			call.Done(call)
			return
		}
		s.mu.Lock()
		s.rec.retries++
		s.mu.Unlock()
	}
	for {
		c, gen, err := s.connForCommand(ctx, last)
		if err == nil {
			call.gen, call.Err, call.Result = gen, nil, Result{}
			if err = c.submitCall(call); err == nil {
				return
			}
			if c.Err() != nil && !errors.Is(err, errLoggingOut) {
				// The connection ended as the call went: the session
				// hears of it next, and connForCommand waits for that.
				continue
			}
			err = withLast(err, last)
		} else if last == nil {
			err = withLast(err, nil) // never sent: say so
		}
		call.Err = err
		call.Done(call)
		return
	}
}
