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

// async handles an Asynchronous Message (RFC 7143 §11.9.1) on the reader
// goroutine.
func (c *Conn) async(a *pdu.AsyncMessage, data []byte) error {
	s := c.s
	ev := AsyncEvent{Event: a.AsyncEvent, VCode: a.AsyncVCode, Parameter1: a.Parameter1,
		Parameter2: a.Parameter2, Parameter3: a.Parameter3, LUN: uint64(a.LUN)}
	if len(data) >= 2 {
		n := min(int(data[0])<<8|int(data[1]), len(data)-2)
		ev.SenseData = append([]byte(nil), data[2:2+n]...)
	}
	c.log.Debug("async message", zap.String("event", pdu.AsyncEventString(a.AsyncEvent)),
		zap.Uint16("p1", a.Parameter1), zap.Uint16("p2", a.Parameter2), zap.Uint16("p3", a.Parameter3))
	switch a.AsyncEvent {
	case pdu.AsyncLogoutRequest:
		// One logout per connection, however often the target asks.
		if c.logoutSent.Load() || !c.asyncLogout.CompareAndSwap(false, true) {
			return nil
		}
		c.stopCommands()
		if s.cfg.OnAsync != nil && s.cfg.OnAsync(c, ev) {
			return nil
		}
		s.logoutOnRequest(c, time.Duration(a.Parameter3)*time.Second)
		return nil
	case pdu.AsyncConnectionDrop:
		if s.cfg.OnAsync != nil {
			s.cfg.OnAsync(c, ev)
		}
		for _, o := range s.Conns() {
			if o.cid == a.Parameter1 {
				o.fail(ErrTargetDropped)
				return nil
			}
		}
		c.log.Debug("async drop for an unknown CID", zap.Uint16("cid", a.Parameter1))
	case pdu.AsyncSessionDrop:
		if s.cfg.OnAsync != nil {
			s.cfg.OnAsync(c, ev)
		}
		for _, o := range s.Conns() {
			o.fail(ErrTargetDropped)
		}
	default:
		if s.cfg.OnAsync != nil {
			s.cfg.OnAsync(c, ev)
		}
	}
	return nil
}

// logoutOnRequest logs c out, as the target asked, within deadline (0: now).
// Commands running may finish for up to half the deadline.
func (s *Session) logoutOnRequest(c *Conn, deadline time.Duration) {
	reason := uint8(pdu.LogoutCloseConnection)
	if len(s.Conns()) <= 1 {
		reason = pdu.LogoutCloseSession
	}
	s.mu.Lock()
	if s.closed {
		// Close is waiting for the session's goroutines: start no more.
		s.mu.Unlock()
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		res := c.Logout(context.Background(), LogoutOptions{Reason: reason, DrainTimeout: deadline / 2})
		s.log.Debug("logged out at the target's request", zap.Uint16("cid", c.cid), zap.Bool("ok", res.OK()), zap.Error(res.Err))
	}()
}

// LogoutRequested reports whether the target asked this connection to log
// out (async event 1).
func (c *Conn) LogoutRequested() bool { return c.asyncLogout.Load() }
