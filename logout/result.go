package logout

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
)

// ConnState is how one connection's logout ended.
type ConnState int

// Connection states.
const (
	// ConnLoggedOut: the target answered the Logout Request with success.
	ConnLoggedOut ConnState = iota
	// ConnClosedWithSession: the session logged out on a sibling connection
	// (reason 0), and the target closed this one with it.
	ConnClosedWithSession
	// ConnRefused: the target answered with response 1, 2 or 3.
	ConnRefused
	// ConnTimeout: no Logout Response came before the deadline, or (Err
	// wrapping ErrStillLoggingOut) a logout of the connection that someone
	// else runs had not ended by the caller's deadline.
	ConnTimeout
	// ConnReset: the target closed or reset the connection without answering.
	ConnReset
	// ConnRejected: the target rejected the Logout Request.
	ConnRejected
	// ConnCanceled: the operation was canceled before the response came.
	ConnCanceled
	// ConnNotAttempted: the session's logout went to another connection
	// and failed, so this one was left as it was.
	ConnNotAttempted
	// ConnError: anything else (a protocol error, a write that failed).
	ConnError
)

var connStateNames = [...]string{
	ConnLoggedOut:         "logged out",
	ConnClosedWithSession: "closed with session",
	ConnRefused:           "refused",
	ConnTimeout:           "timeout",
	ConnReset:             "reset",
	ConnRejected:          "rejected",
	ConnCanceled:          "canceled",
	ConnNotAttempted:      "not attempted",
	ConnError:             "error",
}

// String names the state.
func (s ConnState) String() string {
	if int(s) < len(connStateNames) {
		return connStateNames[s]
	}
	return fmt.Sprintf("ConnState(%d)", int(s))
}

// MarshalText encodes the state as its String.
func (s ConnState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// ok reports a state in which the connection is gone from the target cleanly.
func (s ConnState) ok() bool { return s == ConnLoggedOut || s == ConnClosedWithSession }

// ConnResult is what happened on one connection.
type ConnResult struct {
	CID    uint16
	Reason pdu.LogoutReason // reason code sent: 0 close session, 1 close connection
	State  ConnState
	// Responded is true when a Logout Response arrived; Response,
	// Time2Wait and Time2Retain are then what it said.
	Responded   bool
	Response    pdu.LogoutResponseCode
	Time2Wait   uint16
	Time2Retain uint16
	// Err says why the connection did not log out; nil when it did.
	Err error
	// FailedCommands counts commands still running that were failed.
	FailedCommands int
	Duration       time.Duration
}

// Detail describes the result in words, e.g. "refused: cleanup failed
// (response 3, Time2Wait 2 s, Time2Retain 20 s)".
func (r *ConnResult) Detail() string {
	switch r.State {
	case ConnLoggedOut:
		return "logged out"
	case ConnClosedWithSession:
		return "closed by the target with its session"
	case ConnRefused:
		return fmt.Sprintf("refused: %s (response %d, Time2Wait %d s, Time2Retain %d s)",
			r.Response.String(), r.Response, r.Time2Wait, r.Time2Retain)
	}
	if r.Err != nil {
		return r.State.String() + ": " + r.Err.Error()
	}
	return r.State.String()
}

// SessionResult is what happened to one session.
type SessionResult struct {
	TSIH uint16
	ISID [6]byte
	// LoggedOut is true when every connection logged out (or was closed by
	// the target with the session).
	LoggedOut bool
	// Forced is true when the session did not log out and Force closed it
	// locally.
	Forced bool
	Conns  []ConnResult
}

// Result is the outcome of logging out of one target.
type Result struct {
	Target   string
	Outcome  Outcome
	Sessions []SessionResult
	Duration time.Duration
}

// HRESULT returns the outcome's Windows VDS code.
func (r *Result) HRESULT() uint32 { return r.Outcome.HRESULT() }

// Err returns nil on Success and a sentinel error matching the outcome
// otherwise (ErrSessionNotFound, ErrLogoutFailed, ErrLogoutIncomplete).
func (r *Result) Err() error { return r.Outcome.Err() }

// LoggedOut returns how many sessions logged out.
func (r *Result) LoggedOut() int {
	n := 0
	for i := range r.Sessions {
		if r.Sessions[i].LoggedOut {
			n++
		}
	}
	return n
}

// classify turns a connection's logout exchange into a ConnResult.
func classify(lr session.LogoutResult) ConnResult {
	cr := ConnResult{CID: lr.CID, Reason: lr.Reason, Responded: lr.Responded, Response: lr.Response,
		Time2Wait: lr.Time2Wait, Time2Retain: lr.Time2Retain, Err: lr.Err, FailedCommands: lr.Failed,
		Duration: lr.Duration}
	var rj *session.RejectError
	switch {
	case lr.OK():
		cr.State, cr.Err = ConnLoggedOut, nil
	case lr.Responded:
		cr.State = ConnRefused
	case errors.Is(lr.Err, session.ErrLogoutTimeout), errors.Is(lr.Err, ErrStillLoggingOut),
		errors.Is(lr.Err, context.DeadlineExceeded):
		cr.State = ConnTimeout
	case errors.Is(lr.Err, context.Canceled):
		cr.State = ConnCanceled
	case errors.As(lr.Err, &rj):
		cr.State = ConnRejected
	case errors.Is(lr.Err, session.ErrConnReset):
		cr.State = ConnReset
	default:
		cr.State = ConnError
	}
	return cr
}
