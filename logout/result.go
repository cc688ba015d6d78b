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
	// ConnClosed: no Logout Request went out on the connection: the
	// ladder's last step closed it (TCP), as the deadline left no time for
	// one or a refusal's Time2Wait did not fit in it.
	ConnClosed
	// ConnUnreachable: the session had no connection left (it was
	// recovering, had failed or was lost) and the one reconnect to log it
	// out failed: Err wraps session.ErrTargetUnreachable. The target may
	// keep the session until SessionResult.RetainUntil.
	ConnUnreachable
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
	ConnClosed:            "closed",
	ConnUnreachable:       "unreachable",
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

// Commands counts the SCSI commands that were in flight when a logout
// began, by how they ended; each command is counted once, by the logout
// step that ended it.
type Commands struct {
	// Completed ended with a status from the target while the logout
	// drained or aborted.
	Completed int
	// Aborted ended without a status after the target confirmed ABORT TASK
	// SET (Options.InFlight session.InFlightAbort).
	Aborted int
	// Unknown were failed by the logout: whether the target executed them
	// is not known.
	Unknown int
}

// Total is how many commands were counted.
func (c Commands) Total() int { return c.Completed + c.Aborted + c.Unknown }

func (c *Commands) add(o Commands) {
	c.Completed += o.Completed
	c.Aborted += o.Aborted
	c.Unknown += o.Unknown
}

// StepKind is what a step of the ladder did on a connection.
type StepKind uint8

// Step kinds.
const (
	// StepLogout: a Logout Request went out (or the connection's logout
	// already running was joined) and ended as the step's State says.
	StepLogout StepKind = iota
	// StepClose: the connection was closed (TCP) without a Logout
	// Response: after its logout failed (RFC 7143 §8.1.3 sends it to
	// cleanup like a transport failure), or in place of a Logout Request
	// for which the deadline left no time.
	StepClose
)

// String names the step kind.
func (k StepKind) String() string {
	if k == StepClose {
		return "close"
	}
	return "logout"
}

// MarshalText encodes the kind as its String.
func (k StepKind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// Step is one step the engine took on a connection.
type Step struct {
	Kind StepKind
	// Reason is the Logout Request's reason code (StepLogout).
	Reason pdu.LogoutReason
	// State is how the step ended; for StepClose, ConnClosed.
	State ConnState
	// Responded, Response, Time2Wait and Time2Retain are the Logout
	// Response's, when one came.
	Responded   bool
	Response    pdu.LogoutResponseCode
	Time2Wait   uint16
	Time2Retain uint16
	Err         error
	// Commands counts the commands in flight when the step began, by how
	// they ended.
	Commands Commands
	// Waited is how long the engine waited before the step for the
	// Time2Wait of a refusal on another connection of the session.
	Waited time.Duration
	// At is when the step began, from the start of the operation;
	// Duration how long it took (its drain included).
	At       time.Duration
	Duration time.Duration
}

// Detail describes the step in words.
func (s *Step) Detail() string {
	if s.Kind == StepClose {
		if s.Err != nil {
			return "closed (TCP): " + s.Err.Error()
		}
		return "closed (TCP)"
	}
	cr := ConnResult{Reason: s.Reason, State: s.State, Responded: s.Responded, Response: s.Response,
		Time2Wait: s.Time2Wait, Time2Retain: s.Time2Retain, Err: s.Err}
	return cr.Detail()
}

// ConnResult is what happened on one connection. Its fields other than
// Steps are those of the connection's Logout Request (the last step, when
// the ladder closed the connection after it), or of the close when no
// request went out.
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
	// Commands counts the SCSI commands in flight when the connection's
	// logout steps began, by how they ended (for reason 0, those of every
	// connection of the session). FailedCommands is Commands.Unknown, kept
	// for callers of its first name.
	Commands       Commands
	FailedCommands int
	// Duration is the time of every step on the connection together.
	Duration time.Duration
	// Steps lists what the engine did on the connection, in order; empty
	// for a connection closed with its session or not attempted.
	Steps []Step
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
	// InUse is what Options.InUse said of the session, nil when it is not
	// in use (or there is no hook). A session in use was left as it was
	// (its connections ConnNotAttempted with an error wrapping ErrInUse),
	// unless Force.
	InUse error
	// Commands adds up the connections' Commands.
	Commands Commands
	Conns    []ConnResult
	// State is the session's state when the operation began (up,
	// recovering, failed, lost), for a *session.Session (Adapt).
	State session.SessionState
	// RetainUntil, for a session with no connection that was not logged
	// out (the target unreachable), is when the target has surely dropped
	// it: the loss of its connections plus Time2Wait and Time2Retain. Until
	// then the target may keep it (and its reservations).
	RetainUntil time.Time
}

// Result is the outcome of logging out of one target.
type Result struct {
	Target   string
	Outcome  Outcome
	Sessions []SessionResult
	// Deadline is the operation's deadline (Options.OperationDeadline);
	// Duration the time it took. The steps of each connection say how it
	// was spent.
	Deadline time.Duration
	Duration time.Duration
	// Requested is true when the target asked for the logout (async event
	// 1, see AsyncOptions); Parameter3 is then the seconds it gave.
	Requested  bool
	Parameter3 uint16
	// Commands adds up the sessions' Commands.
	Commands Commands
}

// count fills the sessions' and the result's Commands from the
// connections'.
func (r *Result) count() {
	r.Commands = Commands{}
	for i := range r.Sessions {
		sr := &r.Sessions[i]
		sr.Commands = Commands{}
		for _, c := range sr.Conns {
			sr.Commands.add(c.Commands)
		}
		r.Commands.add(sr.Commands)
	}
}

// LoggedOutOrGone reports whether nothing is left to log out of: every
// session logged out, or there was none to begin with (the outcome stays
// SessionNotFound). It spares a caller that only wants the sessions gone
// the special case every caller of iscsiadm makes of its exit status 21.
func (r *Result) LoggedOutOrGone() bool {
	return r.Outcome == Success || r.Outcome == SessionNotFound
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
		Time2Wait: lr.Time2Wait, Time2Retain: lr.Time2Retain, Err: lr.Err, FailedCommands: lr.Unknown,
		Commands: Commands{Completed: lr.Completed, Aborted: lr.Aborted, Unknown: lr.Unknown}, Duration: lr.Duration}
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
