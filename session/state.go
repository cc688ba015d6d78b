package session

import "fmt"

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

// sessionState is where a session is in its life, under s.mu; moves are
// checked against sessionMoves. Recovery (reconnecting a lost session) will
// add its states here.
//
//	up ──► lost        (its last connection ended without a logout)
//	up | lost ──► closed (Close, without a logout)
//	up | lost | closed ──► loggedOut (a logout the target answered with success;
//	                                 from closed when the answer crossed Close)
type sessionState uint8

const (
	// sessionUp: logged in; it has connections, or is adding its first.
	sessionUp sessionState = iota
	// sessionLost: its last connection ended without a logout (a reset,
	// a dead peer, the target dropped it); the target may keep it until
	// Time2Retain.
	sessionLost
	// sessionLoggedOut: a logout the target answered with success ended
	// it (reason 0, or reason 1 on its last connection).
	sessionLoggedOut
	// sessionClosed: Close ended it without a logout.
	sessionClosed
)

var sessionStateNames = [...]string{
	sessionUp:        "up",
	sessionLost:      "lost",
	sessionLoggedOut: "logged out",
	sessionClosed:    "closed",
}

func (s sessionState) String() string {
	if int(s) < len(sessionStateNames) {
		return sessionStateNames[s]
	}
	return fmt.Sprintf("sessionState(%d)", uint8(s))
}

var sessionMoves = [...]uint8{
	sessionUp:        1<<sessionLost | 1<<sessionLoggedOut | 1<<sessionClosed,
	sessionLost:      1<<sessionLoggedOut | 1<<sessionClosed,
	sessionLoggedOut: 0,
	sessionClosed:    1 << sessionLoggedOut,
}

// moveTo moves the session to next if its state allows it, and reports
// whether it did. The caller holds s.mu.
func (s *Session) moveTo(next sessionState) bool {
	if s.state == next {
		return true
	}
	if sessionMoves[s.state]&(1<<next) == 0 {
		return false
	}
	s.state = next
	return true
}
