package session

import (
	"context"
	"fmt"
	"time"

	"github.com/goiscsi/iscsi/pdu"
	"go.uber.org/zap"
)

// ErrTargetDropped fails the commands of a connection the target said it
// would drop (async events 2 and 3).
var ErrTargetDropped = fmt.Errorf("iscsi: target dropped the connection (async event): %w", ErrConnReset)

// asyncEvent handles an Asynchronous Message (RFC 7143 §11.9.1) on the reader
// goroutine.
func (c *Conn) asyncEvent(a *pdu.AsyncMessage, data []byte) error {
	s := c.s
	ev := AsyncEvent{Event: a.AsyncEvent, VCode: a.AsyncVCode, Parameter1: a.Parameter1,
		Parameter2: a.Parameter2, Parameter3: a.Parameter3, LUN: uint64(a.LUN)}
	if len(data) >= 2 {
		n := min(int(data[0])<<8|int(data[1]), len(data)-2)
		ev.SenseData = append([]byte(nil), data[2:2+n]...)
	}
	c.log.Debug("async message", zap.String("event", a.AsyncEvent.String()),
		zap.Uint16("p1", a.Parameter1), zap.Uint16("p2", a.Parameter2), zap.Uint16("p3", a.Parameter3))
	switch a.AsyncEvent {
	case pdu.AsyncLogoutRequest:
		// One logout per connection, however often the target asks.
		if c.state() >= connLogoutSent || !c.logoutAsked.CompareAndSwap(false, true) {
			return nil
		}
		c.stopCommands()
		if s.cfg.OnAsync != nil && s.cfg.OnAsync(c, ev) {
			return nil
		}
		s.logoutOnRequest(c, a.Parameter3)
		return nil
	case pdu.AsyncConnectionDrop:
		if s.cfg.OnAsync != nil {
			s.cfg.OnAsync(c, ev)
		}
		for _, o := range s.Conns() {
			if o.cid == a.Parameter1 {
				s.dropping(a.Parameter2, a.Parameter3, func() { o.fail(ErrTargetDropped) })
				return nil
			}
		}
		c.log.Debug("async drop for an unknown CID", zap.Uint16("cid", a.Parameter1))
	case pdu.AsyncSessionDrop:
		if s.cfg.OnAsync != nil {
			s.cfg.OnAsync(c, ev)
		}
		s.dropping(a.Parameter2, a.Parameter3, func() {
			for _, o := range s.Conns() {
				o.fail(ErrTargetDropped)
			}
		})
	default:
		if s.cfg.OnAsync != nil {
			s.cfg.OnAsync(c, ev)
		}
	}
	return nil
}

// MaxAsyncLogoutWait is the most the initiator takes, of the time a target
// gives it to log out (async event 1, Parameter3 seconds, up to 65535 s,
// about 18 hours), before it sends the Logout Request. RFC 7143 §11.9.1
// asks for a logout "as early as possible but no later than Parameter3
// seconds", so answering sooner is always allowed; what the wait buys is
// time for the commands already running to finish. Half of it, 30 s, is
// Linux's default SCSI command timeout: a command the target would complete
// gets as long as the SCSI layer above would give it anyway, and a target
// that asks for 65535 s and never completes a command cannot keep the
// session (and a user's logout of it) draining for 9 hours.
const MaxAsyncLogoutWait = 60 * time.Second

// AsyncLogoutDeadlines is the one policy for answering a target's logout
// request (async event 1): the window the target gave, Parameter3 seconds
// (0: now), is clamped to max (MaxAsyncLogoutWait when max <= 0); commands
// already running get half the clamped window to finish (drain), then the
// Logout Request goes out and its response is waited for at most
// responseTimeout (DefaultLogoutTimeout when <= 0, as open-iscsi's
// logout_timeout). The whole logout thus ends within drain + response plus
// a moment to close the connection, whatever Parameter3 says.
func AsyncLogoutDeadlines(parameter3 uint16, max, responseTimeout time.Duration) (drain, response time.Duration) {
	if max <= 0 {
		max = MaxAsyncLogoutWait
	}
	if responseTimeout <= 0 {
		responseTimeout = DefaultLogoutTimeout
	}
	window := min(time.Duration(parameter3)*time.Second, max)
	return window / 2, responseTimeout
}

// logoutOnRequest logs c out, as the target asked, within parameter3
// seconds (0: now), clamped by AsyncLogoutDeadlines.
func (s *Session) logoutOnRequest(c *Conn, parameter3 uint16) {
	reason := pdu.LogoutCloseConnection
	if len(s.Conns()) <= 1 {
		reason = pdu.LogoutCloseSession
	}
	drain, response := AsyncLogoutDeadlines(parameter3, 0, 0)
	s.mu.Lock()
	if s.state == sessionClosed {
		// Close is waiting for the session's goroutines: start no more.
		s.mu.Unlock()
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		// No context: DrainTimeout and Timeout bound the exchange, and
		// Close ends it early by closing the connection.
		res := c.Logout(context.Background(), LogoutOptions{Reason: reason, DrainTimeout: drain, Timeout: response})
		s.log.Debug("logged out at the target's request", zap.Uint16("cid", c.cid), zap.Bool("ok", res.OK()), zap.Error(res.Err))
	}()
}

// LogoutRequested reports whether the target asked this connection to log
// out (async event 1).
func (c *Conn) LogoutRequested() bool { return c.logoutAsked.Load() }

// dropping runs drop, which fails connections the target said it drops
// (async event 2 or 3), with the event's Time2Wait (Parameter2) and
// Time2Retain (Parameter3, seconds) in place of the negotiated ones for the
// recovery the drop starts, if it starts one (RFC 7143 §11.9.1). The
// session hears of each connection's end within drop (Conn.fail).
func (s *Session) dropping(time2Wait, time2Retain uint16, drop func()) {
	s.mu.Lock()
	s.rec.dropping = true
	s.rec.dropT2W = time.Duration(time2Wait) * time.Second
	s.rec.dropT2R = time.Duration(time2Retain) * time.Second
	s.mu.Unlock()
	drop()
	s.mu.Lock()
	s.rec.dropping = false
	s.mu.Unlock()
}
