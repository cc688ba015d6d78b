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
	Reason uint8
	// DrainTimeout is how long commands already running may go on before
	// the Logout Request is sent; 0 sends it at once and fails them.
	DrainTimeout time.Duration
	// Timeout bounds the wait for the Logout Response; 0 means
	// DefaultLogoutTimeout.
	Timeout time.Duration
}

// LogoutResult is what one connection's logout exchange came to.
type LogoutResult struct {
	CID    uint16
	Reason uint8
	// Responded reports that a Logout Response arrived; Response,
	// Time2Wait and Time2Retain are then valid.
	Responded   bool
	Response    uint8
	Time2Wait   uint16
	Time2Retain uint16
	// Err is why the exchange failed: ErrLogoutTimeout, ErrConnReset (the
	// target closed or reset the connection), a *RejectError, the
	// context's error, or a response other than success.
	Err error
	// Failed is how many commands still running were failed.
	Failed   int
	Duration time.Duration
}

// OK reports a logout that the target answered with success.
func (r *LogoutResult) OK() bool { return r.Responded && r.Response == pdu.LogoutSuccess && r.Err == nil }

// LogoutResponseError is a Logout Response other than success.
type LogoutResponseError struct {
	Response    uint8
	Time2Wait   uint16
	Time2Retain uint16
}

func (e *LogoutResponseError) Error() string {
	return fmt.Sprintf("iscsi: logout refused: %s (response %d, Time2Wait %d s, Time2Retain %d s)",
		pdu.LogoutResponseString(e.Response), e.Response, e.Time2Wait, e.Time2Retain)
}

// Logout runs the Logout Request/Response exchange on the connection: it
// stops new commands (on every connection of the session for reason 0), lets
// running ones finish until DrainTimeout, sends the request, waits for the
// response, and closes the connection whatever the outcome. It returns when
// the connection's goroutines have ended.
func (c *Conn) Logout(ctx context.Context, opts LogoutOptions) LogoutResult {
	start := time.Now()
	res := LogoutResult{CID: c.cid, Reason: opts.Reason}
	done := func() LogoutResult {
		res.Duration = time.Since(start)
		c.log.Debug("logout", zap.Uint8("reason", opts.Reason), zap.Bool("responded", res.Responded),
			zap.Uint8("response", res.Response), zap.Error(res.Err), zap.Duration("took", res.Duration))
		return res
	}
	if !c.beginLogout() {
		res.Err = c.Err()
		if res.Err == nil {
			res.Err = errors.New("iscsi: a logout is already running on this connection")
		}
		c.wg.Wait()
		return done()
	}
	s := c.s
	if opts.Reason == pdu.LogoutCloseSession {
		for _, o := range s.Conns() {
			o.stopCommands()
		}
	}
	if opts.DrainTimeout > 0 {
		dctx, cancel := context.WithTimeout(ctx, opts.DrainTimeout)
		if opts.Reason == pdu.LogoutCloseSession {
			for _, o := range s.Conns() {
				o.waitIdle(dctx)
			}
		} else {
			c.waitIdle(dctx)
		}
		cancel()
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultLogoutTimeout
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()

	immediate := true
	for attempt := 0; ; attempt++ {
		t := s.newTask(taskLogout)
		if err := c.register(t, true); err != nil {
			res.Err = err
			break
		}
		req := &pdu.LogoutRequest{Immediate: immediate, ReasonCode: opts.Reason, ITT: t.itt, CID: c.cid}
		c.wmu.Lock()
		if immediate {
			req.CmdSN = s.currentCmdSN()
		} else {
			sn, _, ok := s.takeCmdSN()
			if !ok {
				c.wmu.Unlock()
				res.Err = errors.New("iscsi: logout: CmdSN window closed")
				break
			}
			req.CmdSN = sn
		}
		req.ExpStatSN = c.expStatSN.Load()
		c.logoutSent.Store(true)
		err := c.sendLocked(req, nil)
		c.wmu.Unlock()
		if err != nil {
			res.Err = err
			break
		}
		select {
		case <-t.done:
		case <-timer.C:
			c.remove(t.itt)
			res.Err = ErrLogoutTimeout
		case <-ctx.Done():
			c.remove(t.itt)
			res.Err = ctx.Err()
		}
		if res.Err != nil {
			break
		}
		var rj *RejectError
		if errors.As(t.err, &rj) && rj.Reason == pdu.RejectImmediateCommand && immediate && attempt == 0 {
			// The target will not take an immediate logout: send it in order.
			immediate = false
			continue
		}
		if t.err != nil {
			res.Err = t.err
			break
		}
		r := t.logoutResp
		res.Responded, res.Response, res.Time2Wait, res.Time2Retain = true, r.Response, r.Time2Wait, r.Time2Retain
		if r.Response != pdu.LogoutSuccess {
			res.Err = &LogoutResponseError{Response: r.Response, Time2Wait: r.Time2Wait, Time2Retain: r.Time2Retain}
		}
		break
	}

	res.Failed = c.taskCount(taskSCSI)
	if res.OK() {
		c.mu.Lock()
		if c.err == nil {
			c.err = ErrLoggedOut
		}
		c.mu.Unlock()
		if opts.Reason == pdu.LogoutCloseSession {
			s.markLoggedOut()
			// The target closes the session's other connections.
			for _, o := range s.Conns() {
				if o != c {
					o.fail(ErrLoggedOut)
				}
			}
		}
		// The target closes the connection after the response; give it a
		// moment so the FIN comes from its side.
		grace := time.NewTimer(logoutGrace)
		select {
		case <-c.readerDone:
		case <-grace.C:
		case <-ctx.Done():
		}
		grace.Stop()
	}
	switch {
	case res.OK():
		c.fail(ErrLoggedOut)
	case res.Err != nil:
		c.fail(fmt.Errorf("iscsi: logout failed: %w", res.Err))
	}
	c.wg.Wait()
	if len(s.Conns()) == 0 && res.OK() {
		s.markLoggedOut()
	}
	return done()
}

// beginLogout moves the connection to logging out; false if it was not active.
func (c *Conn) beginLogout() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == connClosed || c.logoutSent.Load() || c.loggingOut {
		return false
	}
	c.loggingOut = true
	c.state = connLoggingOut
	return true
}

// stopCommands makes the connection refuse new commands.
func (c *Conn) stopCommands() {
	c.mu.Lock()
	if c.state == connActive {
		c.state = connLoggingOut
	}
	c.mu.Unlock()
}

// waitIdle waits until no SCSI command runs on the connection, or ctx ends.
func (c *Conn) waitIdle(ctx context.Context) {
	for {
		c.mu.Lock()
		if c.scsiCount == 0 || c.state == connClosed {
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

func (c *Conn) taskCount(kind taskKind) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.tasks {
		if t.kind == kind {
			n++
		}
	}
	return n
}

func (s *Session) markLoggedOut() {
	s.mu.Lock()
	s.loggedOut = true
	s.mu.Unlock()
}

// LoggedOut reports whether the session ended with a successful logout.
func (s *Session) LoggedOut() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loggedOut
}

// Logout logs the whole session out (reason 0 on one connection) and closes
// it. The error is nil only if the target answered success.
func (s *Session) Logout(ctx context.Context, opts LogoutOptions) (LogoutResult, error) {
	opts.Reason = pdu.LogoutCloseSession
	for _, c := range s.Conns() {
		if !c.Active() {
			continue
		}
		res := c.Logout(ctx, opts)
		if res.OK() {
			s.Close()
			return res, nil
		}
		s.Close()
		return res, res.Err
	}
	s.Close()
	return LogoutResult{}, ErrClosed
}
