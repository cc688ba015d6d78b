package session

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/goiscsi/iscsi/pdu"
	"go.uber.org/zap"
)

// DefaultLogoutTimeout is how long a Logout Request waits for its response
// (open-iscsi's logout_timeout).
const DefaultLogoutTimeout = 15 * time.Second

// logoutGrace is how long, after a successful Logout Response, the initiator
// waits for the target to close the connection before closing it itself.
const logoutGrace = 250 * time.Millisecond

// LogoutOptions control one connection's logout.
type LogoutOptions struct {
	// Reason is pdu.LogoutCloseSession or pdu.LogoutCloseConnection.
	Reason pdu.LogoutReason
	// InFlight is what happens to the SCSI commands still running when
	// the logout begins: drained (the default), aborted at the target, or
	// failed at once.
	InFlight InFlightPolicy
	// DrainTimeout is how long commands already running may go on before
	// the Logout Request is sent (policy InFlightDrain); 0 sends it at once
	// and fails them.
	DrainTimeout time.Duration
	// AbortTimeout bounds the task management exchanges of policy
	// InFlightAbort; 0 means Timeout.
	AbortTimeout time.Duration
	// Timeout bounds the wait for the Logout Response; 0 means
	// DefaultLogoutTimeout.
	Timeout time.Duration
	// DrainSession, with reason pdu.LogoutCloseConnection, also stops new
	// commands on the session's other connections and lets theirs finish
	// (within DrainTimeout) before the request goes out, as reason
	// pdu.LogoutCloseSession always does. It is for logging out every
	// connection of a session at once: a target may drop a command still
	// running on one connection when another logs out (istgt does), and the
	// command would end with its outcome unknown.
	DrainSession bool
}

// LogoutResult is what one connection's logout exchange came to.
type LogoutResult struct {
	CID    uint16
	Reason pdu.LogoutReason
	// Responded reports that a Logout Response arrived; Response,
	// Time2Wait and Time2Retain are then valid.
	Responded   bool
	Response    pdu.LogoutResponseCode
	Time2Wait   uint16
	Time2Retain uint16
	// Err is why the exchange failed: ErrLogoutTimeout, ErrConnReset (the
	// target closed or reset the connection), a *RejectError, the
	// context's error, or a response other than success.
	Err error
	// The SCSI commands in flight when the logout began (on this
	// connection; on every connection of the session for reason 0), by
	// how they ended: Completed with a status from the target, Aborted as
	// the target confirmed (policy InFlightAbort), Unknown failed by the
	// logout with their outcome unknown. Failed is Unknown, kept for
	// callers of its first name.
	Completed int
	Aborted   int
	Unknown   int
	Failed    int
	Duration  time.Duration
}

// OK reports a logout that the target answered with success.
func (r *LogoutResult) OK() bool {
	return r.Responded && r.Response == pdu.LogoutSuccess && r.Err == nil
}

// LogoutResponseError is a Logout Response other than success.
type LogoutResponseError struct {
	Response    pdu.LogoutResponseCode
	Time2Wait   uint16
	Time2Retain uint16
}

func (e *LogoutResponseError) Error() string {
	return fmt.Sprintf("iscsi: logout refused: %s (response %d, Time2Wait %d s, Time2Retain %d s)",
		e.Response.String(), e.Response, e.Time2Wait, e.Time2Retain)
}

// Logout runs the Logout Request/Response exchange on the connection: it
// stops new commands (on every connection of the session for reason 0), lets
// running ones finish until DrainTimeout, sends the request, waits for the
// response, and closes the connection whatever the outcome. It returns when
// the connection's goroutines have ended.
//
// A connection logs out once: a Logout while another runs on the same
// connection (the caller's, or the one the session starts when the target
// asks for it) waits for that one and returns its result. Logout must not be
// called from Config.OnAsync, which runs on the connection's reader.
func (c *Conn) Logout(ctx context.Context, opts LogoutOptions) LogoutResult {
	start := time.Now()
	switch c.beginLogout() {
	case logoutJoin:
		// The caller's own bounds hold however long the logout it meets
		// takes: its drain and response deadlines, and its context.
		timeout := opts.Timeout
		if timeout <= 0 {
			timeout = DefaultLogoutTimeout
		}
		bound := time.NewTimer(opts.DrainTimeout + timeout)
		defer bound.Stop()
		select {
		case <-c.logoutDone:
			return c.logoutRes
		case <-bound.C:
			return LogoutResult{CID: c.cid, Reason: opts.Reason, Err: ErrLogoutRunning, Duration: time.Since(start)}
		case <-ctx.Done():
			return LogoutResult{CID: c.cid, Reason: opts.Reason, Err: ctx.Err(), Duration: time.Since(start)}
		}
	case logoutGone:
		res := LogoutResult{CID: c.cid, Reason: opts.Reason, Err: c.Err()}
		if res.Err == nil {
			res.Err = ErrClosed
		}
		c.wg.Wait()
		res.Duration = time.Since(start)
		return res
	}
	res := c.logout(ctx, opts)
	res.Duration = time.Since(start)
	if ce := c.log.Check(zap.DebugLevel, "logout"); ce != nil {
		ce.Write(zap.Stringer("reason", opts.Reason), zap.Bool("responded", res.Responded),
			zap.Stringer("response", res.Response), zap.Error(res.Err), zap.Duration("took", res.Duration))
	}
	c.logoutRes = res
	close(c.logoutDone)
	return res
}

func (c *Conn) logout(ctx context.Context, opts LogoutOptions) LogoutResult {
	res := LogoutResult{CID: c.cid, Reason: opts.Reason}
	s := c.s
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultLogoutTimeout
	}
	// The commands ERL 2 connection recovery holds are in flight too: a
	// logout of the whole session (reason 0, or reason 1 on each of its
	// connections) ends them. Taken as it begins, as the others.
	sessionWide := opts.Reason == pdu.LogoutCloseSession || opts.Reason == pdu.LogoutCloseConnection && opts.DrainSession
	if sessionWide {
		s.takeHeld()
	}
	stopped, inFlight := c.settleInFlight(ctx, opts, timeout)
	// One deadline bounds the whole exchange: the write of the request
	// (a target that stopped reading holds it) and the wait for the answer.
	lctx, cancel := context.WithTimeout(ctx, timeout)
	res.Err = c.exchangeLogout(lctx, ctx, opts.Reason, &res)
	cancel()

	if res.OK() {
		if opts.Reason == pdu.LogoutCloseSession {
			s.setLogoutResult(res)
			// The target closes the session's other connections.
			for _, o := range s.Conns() {
				if o != c {
					o.fail(ErrLoggedOut)
				}
			}
		}
		// The target closes the connection after the response; give it a
		// moment so the FIN comes from its side.
		select {
		case <-c.readerDone:
			// Already closed: no timer to set (thousands of sessions
			// logging out at once each set one).
		default:
			grace := time.NewTimer(logoutGrace)
			select {
			case <-c.readerDone:
			case <-grace.C:
			case <-ctx.Done():
			}
			grace.Stop()
		}
		c.fail(ErrLoggedOut)
	} else {
		// ErrClosed too: commands still running on the connection end
		// saying their outcome is unknown, not with the logout's cause
		// alone (a canceled logout is not a canceled command).
		c.fail(fmt.Errorf("iscsi: logout failed: %w (%w)", res.Err, ErrClosed))
		// The session goes on where it still can: the connections this
		// logout stopped take commands again.
		for _, o := range stopped {
			o.resumeCommands()
		}
	}
	c.wg.Wait()
	if res.OK() && sessionWide {
		if held := s.claimHeld(opts.Reason == pdu.LogoutCloseSession); held != nil {
			s.endConnRecovery(ctx, held)
			inFlight = append(inFlight, held...)
		}
	}
	countInFlight(inFlight, &res)
	if res.OK() && s.LoggedOut() {
		// The reader marked the session logged out with what the response
		// said; keep the whole result.
		s.setLogoutResult(res)
	}
	return res
}

// settleInFlight stops new commands (on the session's other connections
// too for reason 0 or DrainSession) and deals with the commands in flight
// as opts.InFlight says. It returns the connections it stopped, to be given
// their commands back if the logout fails, and the commands in flight when
// it began, for countInFlight.
func (c *Conn) settleInFlight(ctx context.Context, opts LogoutOptions, timeout time.Duration) (stopped []*Conn, inFlight []*task) {
	var others []*Conn
	if opts.Reason == pdu.LogoutCloseSession || opts.DrainSession {
		for _, o := range c.s.Conns() {
			if o == c {
				continue
			}
			others = append(others, o)
			if o.stopCommands() {
				stopped = append(stopped, o)
			}
		}
	}
	c.mu.Lock()
	inFlight = c.logoutInFlight
	c.mu.Unlock()
	if opts.Reason == pdu.LogoutCloseSession {
		for _, o := range others {
			inFlight = append(inFlight, o.inFlight()...)
		}
	}
	switch opts.InFlight {
	case InFlightFail:
		failInFlight(inFlight)
	case InFlightAbort:
		abortTimeout := opts.AbortTimeout
		if abortTimeout <= 0 {
			abortTimeout = timeout
		}
		c.abortInFlight(ctx, inFlight, abortTimeout)
	default:
		if opts.DrainTimeout > 0 {
			dctx, cancel := context.WithTimeout(ctx, opts.DrainTimeout)
			c.waitIdle(dctx)
			for _, o := range others {
				o.waitIdle(dctx)
			}
			cancel()
		}
	}
	return stopped, inFlight
}

// exchangeLogout sends the Logout Request and waits for its response until
// ctx (the caller's parent with the logout's deadline) ends; a request the
// target rejects as immediate goes once more in order. It fills res from
// the response and returns why the exchange failed, nil on success.
func (c *Conn) exchangeLogout(ctx, parent context.Context, reason pdu.LogoutReason, res *LogoutResult) error {
	for immediate := true; ; immediate = false {
		t, err := c.sendLogout(ctx, parent, reason, immediate)
		if err != nil {
			return err
		}
		// On a timeout or a cancel the task stays registered until the
		// connection is failed: a response already on its way then meets
		// its request, rather than looking like a Logout Response for a
		// tag never sent (a protocol error that would end the
		// connection's commands with the wrong cause).
		select {
		case <-t.done:
		case <-ctx.Done():
			return logoutStopped(parent)
		}
		var rj *RejectError
		if errors.As(t.err, &rj) && rj.Reason == pdu.RejectImmediateCommand && immediate {
			// The target will not take an immediate logout: send it in order.
			continue
		}
		if t.err != nil {
			return t.err
		}
		r := t.logoutResp
		res.Responded, res.Response, res.Time2Wait, res.Time2Retain = true, r.Response, r.Time2Wait, r.Time2Retain
		if r.Response != pdu.LogoutSuccess {
			return &LogoutResponseError{Response: r.Response, Time2Wait: r.Time2Wait, Time2Retain: r.Time2Retain}
		}
		return nil
	}
}

// logoutStopped is why a logout's wait ended early: the caller's context
// (canceled), else the logout's own deadline.
func logoutStopped(parent context.Context) error {
	if err := parent.Err(); err != nil {
		return err
	}
	return ErrLogoutTimeout
}

// sendLogout registers a logout task and sends its request. A write that
// does not end (the target stopped reading) does not outlast ctx: the
// connection is failed, which ends it, and the error says so.
func (c *Conn) sendLogout(ctx, parent context.Context, reason pdu.LogoutReason, immediate bool) (*task, error) {
	s := c.s
	t := s.newTask(taskLogout)
	t.logoutReason = reason
	if err := c.register(t, true); err != nil {
		return nil, err
	}
	req := &pdu.LogoutRequest{Immediate: immediate, ReasonCode: reason, ITT: t.itt, CID: c.cid}
	c.wmu.Lock()
	if immediate {
		req.CmdSN = s.currentCmdSN()
	} else {
		sn, _, ok := s.takeCmdSN()
		if !ok {
			c.wmu.Unlock()
			c.remove(t.itt)
			return nil, errors.New("iscsi: logout: CmdSN window closed")
		}
		req.CmdSN = sn
	}
	t.setRequest(req.CmdSN)
	req.ExpStatSN = c.expStatSN.Load()
	c.moveToLocking(connLogoutSent)
	stop := context.AfterFunc(ctx, func() {
		c.fail(fmt.Errorf("iscsi: the Logout Request could not be written (the target does not read): %w", logoutStopped(parent)))
	})
	err := c.sendLocked(req, nil)
	c.wmu.Unlock()
	stop()
	if err != nil {
		return nil, err
	}
	return t, nil
}

// What beginLogout found.
const (
	logoutFirst = iota // this call runs the logout
	logoutJoin         // a logout runs or ran: wait for its result
	logoutGone         // the connection ended without a logout
)

// beginLogout moves the connection to logging out if nothing else did.
func (c *Conn) beginLogout() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.ownLogout:
		return logoutJoin
	case !c.moveTo(connLoggingOut):
		return logoutGone
	}
	c.ownLogout = true
	c.logoutInFlight = c.inFlightLocked()
	return logoutFirst
}

// stopCommands makes the connection refuse new commands; it reports whether
// the connection took commands until now.
func (c *Conn) stopCommands() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state() == connUp && c.moveTo(connStopped)
}

// resumeCommands undoes stopCommands after a session logout that failed,
// unless the target asked for a logout of the connection.
func (c *Conn) resumeCommands() {
	c.mu.Lock()
	if c.state() == connStopped && !c.logoutAsked.Load() {
		c.moveTo(connUp)
	}
	c.mu.Unlock()
}

// waitIdle waits until no SCSI command runs on the connection, or ctx ends.
func (c *Conn) waitIdle(ctx context.Context) {
	for {
		c.mu.Lock()
		if c.scsiCount == 0 || c.state().ended() {
			c.mu.Unlock()
			return
		}
		if c.idle == nil {
			c.idle = make(chan struct{})
		}
		ch := c.idle
		c.mu.Unlock()
		select {
		case <-ch:
		case <-c.closing:
			return
		case <-ctx.Done():
			return
		}
	}
}

// markLoggedOut records that the session ended with a successful logout.
func (s *Session) markLoggedOut(res LogoutResult) {
	s.mu.Lock()
	if s.state != sessionLoggedOut && s.moveTo(sessionLoggedOut) {
		s.logoutRes = res
	}
	s.mu.Unlock()
	s.flushEvents()
}

// setLogoutResult is markLoggedOut with the logout's final result.
func (s *Session) setLogoutResult(res LogoutResult) {
	s.mu.Lock()
	if s.moveTo(sessionLoggedOut) {
		s.logoutRes = res
	}
	s.mu.Unlock()
	s.flushEvents()
}

// LoggedOut reports whether the session ended with a successful logout.
func (s *Session) LoggedOut() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state == sessionLoggedOut
}

// Logout logs the whole session out (reason 0 on one connection) and closes
// it. The error is nil only if the target answered success. If the session
// already logged out (the target asked for it), Logout returns that logout's
// result.
//
// Logout stops the session's recovery first (StopRecovery). A session with
// no connection left (recovering, failed or lost) is reconnected once
// within ctx to be logged out (ConnectForLogout), so that the target drops
// it; if the target cannot be reached the error wraps ErrTargetUnreachable
// and the target may keep the session until Time2Retain (Recovery).
func (s *Session) Logout(ctx context.Context, opts LogoutOptions) (LogoutResult, error) {
	opts.Reason = pdu.LogoutCloseSession
	defer s.Close()
	s.StopRecovery()
	for {
		c := s.logoutConn()
		if c == nil {
			s.mu.Lock()
			res, st := s.logoutRes, s.state
			s.mu.Unlock()
			switch {
			case st == sessionLoggedOut:
				return res, nil
			case st == sessionFailed || st == sessionLost && s.cfg.Recovery != nil:
				// A session that recovers reconnects once to log out,
				// so that the target drops it; one without recovery
				// ends with its connections, as it always did.
				var err error
				if c, err = s.ConnectForLogout(ctx); err != nil {
					return LogoutResult{Reason: opts.Reason, Err: err}, err
				}
			default:
				return LogoutResult{}, ErrClosed
			}
		}
		res := c.Logout(ctx, opts)
		switch {
		case !res.OK():
			return res, res.Err
		case res.Reason == pdu.LogoutCloseSession || len(s.Conns()) == 0:
			return res, nil
		}
		// We met a logout of that connection alone: go on with the others.
	}
}

// logoutConn picks the connection for a session logout: one whose logout
// runs (to join it rather than start a second), else an active one, else any
// still up.
func (s *Session) logoutConn() *Conn {
	conns := s.Conns()
	for _, c := range conns {
		c.mu.Lock()
		running := c.ownLogout && !c.state().ended()
		c.mu.Unlock()
		if running {
			return c
		}
	}
	for _, c := range conns {
		if c.Active() {
			return c
		}
	}
	for _, c := range conns {
		if c.Err() == nil {
			return c
		}
	}
	return nil
}

// logoutForRecovery sends, on c, a Logout Request with reason 2 ("remove
// the connection for recovery", RFC 7143 §11.14.1) for the connection cid,
// lost, of the session at ErrorRecoveryLevel 2, and waits for the response
// until ctx ends. c goes on: only cid is removed, and its tasks wait at the
// target for TASK REASSIGN (connrecovery.go).
func (c *Conn) logoutForRecovery(ctx context.Context, cid uint16) (pdu.LogoutResponse, error) {
	t := c.s.newTask(taskLogout)
	t.logoutReason = pdu.LogoutRemoveForRecovery
	if err := c.register(t, false); err != nil {
		return pdu.LogoutResponse{}, err
	}
	req := &pdu.LogoutRequest{Immediate: true, ReasonCode: pdu.LogoutRemoveForRecovery, ITT: t.itt, CID: cid,
		CmdSN: c.s.currentCmdSN(), ExpStatSN: c.expStatSN.Load()}
	t.setRequest(req.CmdSN)
	switch late, err := c.exchange(ctx, t, req); {
	case late:
		return pdu.LogoutResponse{}, fmt.Errorf("iscsi: no Logout Response (reason 2) for connection %d: %w", cid, err)
	case err != nil:
		return pdu.LogoutResponse{}, fmt.Errorf("iscsi: logout (reason 2) for connection %d: %w", cid, err)
	}
	return t.logoutResp, nil
}
