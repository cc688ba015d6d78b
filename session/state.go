package session

import (
	"fmt"
	"time"

	"go.uber.org/zap"
)

// connState is where a connection is in its life. Every change goes through
// (*Conn).moveTo, under c.mu, and is checked against connMoves; the state
// is also kept in an atomic so that the hot path reads it without the lock.
//
//	up ──► stopped ──► up            (a session logout elsewhere failed)
//	up | stopped ──► loggingOut ──► logoutSent ──► loggedOut
//	any but loggedOut ──► closed     (fail: reset, protocol error, Close)
//
// loggedOut and closed are the two ends; a connection that logged out and
// then closed stays loggedOut. docs/ARCHITECTURE.md has the table.
type connState uint32

const (
	// connUp is full feature phase: the connection takes commands.
	connUp connState = iota
	// connStopped takes no new commands: a logout of the whole session
	// on another connection, or the target's request for a logout
	// (async event 1, its logout to follow), stopped it.
	connStopped
	// connLoggingOut: its own logout runs; commands in flight drain,
	// abort or fail; the Logout Request has not gone out.
	connLoggingOut
	// connLogoutSent: the Logout Request is on its way; nothing else
	// goes out on the connection (an R2T then fails its write).
	connLogoutSent
	// connLoggedOut: the target answered the logout with success; what
	// it sends after is discarded, and the socket closes.
	connLoggedOut
	// connClosed: the connection ended without a logout; Err says why.
	connClosed
)

var connStateNames = [...]string{
	connUp:         "up",
	connStopped:    "stopped",
	connLoggingOut: "logging out",
	connLogoutSent: "logout sent",
	connLoggedOut:  "logged out",
	connClosed:     "closed",
}

func (s connState) String() string {
	if int(s) < len(connStateNames) {
		return connStateNames[s]
	}
	return fmt.Sprintf("connState(%d)", uint32(s))
}

// connMoves are the transitions each state allows (a bit per target
// state).
var connMoves = [...]uint32{
	connUp:         1<<connStopped | 1<<connLoggingOut | 1<<connClosed,
	connStopped:    1<<connUp | 1<<connLoggingOut | 1<<connClosed,
	connLoggingOut: 1<<connLogoutSent | 1<<connClosed,
	connLogoutSent: 1<<connLoggedOut | 1<<connClosed,
	connLoggedOut:  0,
	connClosed:     0,
}

// ended reports a state no connection leaves.
func (s connState) ended() bool { return s == connLoggedOut || s == connClosed }

// state returns the connection's state, without the lock.
func (c *Conn) state() connState { return connState(c.st.Load()) }

// moveTo moves the connection to next if its state allows it, and reports
// whether it did. The caller holds c.mu.
func (c *Conn) moveTo(next connState) bool {
	cur := c.state()
	if cur == next {
		return true
	}
	if connMoves[cur]&(1<<next) == 0 {
		return false
	}
	c.st.Store(uint32(next))
	return true
}

// moveToLocking is moveTo taking c.mu.
func (c *Conn) moveToLocking(next connState) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.moveTo(next)
}

// SessionState is where a session is in its life, under s.mu; moves are
// checked against sessionMoves and each one is an event (Config.OnState)
// and a log line.
//
//	up ──► lost        (its last connection ended without a logout; no recovery)
//	up ──► recovering  (the same, with Config.Recovery: reinstatement runs)
//	recovering ──► up  (reinstated: a new TSIH, the same Session)
//	recovering ──► failed (the replacement timeout passed, or a logout stopped it)
//	failed ──► up      (a logout's reconnect, to log the session out)
//	any but loggedOut ──► closed (Close, without a logout)
//	any ──► loggedOut  (a logout the target answered with success; from
//	                    closed when the answer crossed Close)
type SessionState uint8

// The states of a session. Recovery (Config.Recovery) adds recovering and
// failed to the life of a session that has none: up, then lost, logged out
// or closed.
const (
	// SessionUp: logged in; it has connections, or is adding its first.
	SessionUp SessionState = iota
	// SessionLost: its last connection ended without a logout (a reset,
	// a dead peer, the target dropped it) and the session does not
	// recover; the target may keep it until Time2Retain.
	SessionLost
	// SessionLoggedOut: a logout the target answered with success ended
	// it (reason 0, or reason 1 on its last connection).
	SessionLoggedOut
	// SessionClosed: Close ended it without a logout.
	SessionClosed
	// SessionRecovering: its last connection ended without a logout and
	// the session reconnects and reinstates itself (ERL 0, RFC 7143
	// §6.3.5); commands wait for it (Recovery.ReplacementTimeout).
	SessionRecovering
	// SessionFailed: recovery gave up (the replacement timeout passed, or
	// a logout stopped it and could not reach the target); commands fail
	// at once with ErrSessionFailed.
	SessionFailed
)

// Internal names of the states, as the rest of the package spells them.
const (
	sessionUp         = SessionUp
	sessionLost       = SessionLost
	sessionLoggedOut  = SessionLoggedOut
	sessionClosed     = SessionClosed
	sessionRecovering = SessionRecovering
	sessionFailed     = SessionFailed
)

var sessionStateNames = [...]string{
	sessionUp:         "up",
	sessionLost:       "lost",
	sessionLoggedOut:  "logged out",
	sessionClosed:     "closed",
	sessionRecovering: "recovering",
	sessionFailed:     "failed",
}

// String names the state: "up", "lost", "logged out", "closed",
// "recovering", "failed".
func (s SessionState) String() string {
	if int(s) < len(sessionStateNames) {
		return sessionStateNames[s]
	}
	return fmt.Sprintf("SessionState(%d)", uint8(s))
}

// MarshalText encodes the state as its String, for JSON.
func (s SessionState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Ended reports a state the session does not leave by itself: lost,
// failed, logged out or closed. A failed or lost session still leaves it
// for a logout.
func (s SessionState) Ended() bool {
	return s != SessionUp && s != SessionRecovering
}

var sessionMoves = [...]uint8{
	sessionUp:         1<<sessionLost | 1<<sessionLoggedOut | 1<<sessionClosed | 1<<sessionRecovering,
	sessionLost:       1<<sessionLoggedOut | 1<<sessionClosed | 1<<sessionUp,
	sessionLoggedOut:  0,
	sessionClosed:     1 << sessionLoggedOut,
	sessionRecovering: 1<<sessionUp | 1<<sessionFailed | 1<<sessionLoggedOut | 1<<sessionClosed,
	sessionFailed:     1<<sessionUp | 1<<sessionLoggedOut | 1<<sessionClosed,
}

// moveTo moves the session to next if its state allows it, and reports
// whether it did. The caller holds s.mu. The move is logged at once and
// queued for Config.OnState, which flushEvents delivers once s.mu is
// released.
func (s *Session) moveTo(next SessionState) bool {
	if s.state == next {
		return true
	}
	if sessionMoves[s.state]&(1<<next) == 0 {
		return false
	}
	from := s.state
	s.state = next
	ev := StateEvent{From: from, To: next, At: time.Now(), TSIH: s.tsih, Recovery: s.recoveryLocked()}
	s.notifyLocked()
	if s.log != nil {
		s.log.Info("session state", zap.Stringer("from", ev.From), zap.Stringer("to", ev.To), zap.Uint16("tsih", ev.TSIH),
			zap.Int("attempts", ev.Recovery.Attempts), zap.NamedError("lastError", ev.Recovery.LastErr))
	}
	if s.cfg.OnState != nil {
		s.events = append(s.events, ev)
	}
	return true
}
