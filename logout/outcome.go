// Package logout logs out of every session to one target at once, with a
// Logout Request/Response exchange on every connection, and aggregates what
// happened into one outcome with the Windows VDS codes.
//
// Start returns an Operation at once; the caller waits on it, asks for its
// progress or cancels it. An Operation is the IVdsAsync object that
// IVdsIscsiInitiatorAdapter::LogoutFromTarget returns (MS-VDS 3.4.5.2.2),
// method by method:
//
//   - IVdsAsync::Cancel is Operation.Cancel. While the operation runs it
//     succeeds (nil, S_OK): the connections still waiting for a Logout
//     Response are closed, those not reached yet are left as they are, and
//     the operation completes with the outcome Canceled, whose HRESULT is
//     VDS_E_OPERATION_CANCELED (0x8004240D); the per-connection results
//     still say which connections had logged out before the cancel. Once
//     every connection's logout has ended it is too late: Cancel returns
//     ErrCancelTooLate, VDS_E_CANCEL_TOO_LATE (0x8004240C), and leaves the
//     operation as it is. A second Cancel of a canceled operation succeeds
//     again and changes nothing.
//   - IVdsAsync::QueryStatus is Operation.Status: VDS_E_OPERATION_PENDING
//     (0x80042409, the value of vds.h; MS-VDS 2.2.3 writes 0x00042409) with
//     the percentage of connections whose logout has ended, 0 to 99, while
//     the operation runs; the operation's own HRESULT with 100 once it is
//     done.
//   - IVdsAsync::Wait is Operation.Wait(ctx) (Result, error): the Result
//     carries the operation's HRESULT (Result.HRESULT), the error is only
//     ctx's when the caller stops waiting first. Operation.Done is the
//     channel a Go caller selects on instead of an event handle.
//
// The outcome is Success (S_OK), SessionNotFound
// (VDS_E_ISCSI_SESSION_NOT_FOUND 0x8004270A), Failed
// (VDS_E_ISCSI_LOGOUT_FAILED 0x80042709), Incomplete
// (VDS_E_ISCSI_LOGOUT_INCOMPLETE 0x80042710) or Canceled
// (VDS_E_OPERATION_CANCELED 0x8004240D).
//
// One deadline, Options.Deadline (15 s by default, open-iscsi's
// logout_timeout), bounds the whole operation: each session's drain, its
// Logout Requests, a wait for the target's Time2Wait and the retry after it
// share it. Per session the engine climbs an escalation ladder (see
// Strategy): reason 0 (close the session) on one connection; if the target
// refuses it, the request is sent once more after the refusal's Time2Wait
// when that fits in the deadline; if it is still refused or unanswered,
// reason 1 (close the connection) goes out on each connection still up; a
// connection whose logout failed, or that the deadline leaves no time for,
// is closed (TCP). Every step taken is in ConnResult.Steps.
package logout

import (
	"errors"
	"fmt"
)

// Outcome is the aggregate result of logging out of a target, as
// IVdsIscsiInitiatorAdapter::LogoutFromTarget reports it.
type Outcome int

// Outcomes.
const (
	// Success: every session to the target logged out.
	Success Outcome = iota
	// SessionNotFound: there was no session to the target.
	SessionNotFound
	// Failed: no session logged out.
	Failed
	// Incomplete: some sessions logged out, some did not.
	Incomplete
	// Canceled: Cancel stopped the operation before every connection's
	// logout had ended. The sessions' results say which logged out.
	Canceled
)

// HRESULTs of the outcomes.
const (
	HResultOK               = 0x00000000 // S_OK
	HResultSessionNotFound  = 0x8004270A // VDS_E_ISCSI_SESSION_NOT_FOUND
	HResultLogoutFailed     = 0x80042709 // VDS_E_ISCSI_LOGOUT_FAILED
	HResultLogoutIncomplete = 0x80042710 // VDS_E_ISCSI_LOGOUT_INCOMPLETE
	HResultInvalidArg       = 0x80070057 // E_INVALIDARG
	// HResultOperationPending is what Status reports while the operation
	// runs: VDS_E_OPERATION_PENDING as vds.h defines it (MS-VDS 2.2.3
	// writes 0x00042409, a success code; vds.h's value is the one Windows
	// returns).
	HResultOperationPending  = 0x80042409 // VDS_E_OPERATION_PENDING
	HResultOperationCanceled = 0x8004240D // VDS_E_OPERATION_CANCELED
	HResultCancelTooLate     = 0x8004240C // VDS_E_CANCEL_TOO_LATE
)

// Errors matching the outcomes other than Success, for errors.Is.
var (
	ErrSessionNotFound  = errors.New("iscsi: no session to the target (VDS_E_ISCSI_SESSION_NOT_FOUND)")
	ErrLogoutFailed     = errors.New("iscsi: no session to the target logged out (VDS_E_ISCSI_LOGOUT_FAILED)")
	ErrLogoutIncomplete = errors.New("iscsi: some sessions to the target did not log out (VDS_E_ISCSI_LOGOUT_INCOMPLETE)")
	ErrCanceled         = errors.New("iscsi: the logout was canceled (VDS_E_OPERATION_CANCELED)")
	// ErrCancelTooLate is what Cancel returns once every connection's
	// logout has ended: the operation's result stands.
	ErrCancelTooLate = errors.New("iscsi: too late to cancel the logout: it has ended (VDS_E_CANCEL_TOO_LATE)")
)

// HRESULT returns the outcome's Windows VDS code.
func (o Outcome) HRESULT() uint32 {
	switch o {
	case Success:
		return HResultOK
	case SessionNotFound:
		return HResultSessionNotFound
	case Failed:
		return HResultLogoutFailed
	case Incomplete:
		return HResultLogoutIncomplete
	case Canceled:
		return HResultOperationCanceled
	}
	return HResultLogoutFailed
}

// Err returns nil for Success and the matching sentinel error otherwise.
func (o Outcome) Err() error {
	switch o {
	case Success:
		return nil
	case SessionNotFound:
		return ErrSessionNotFound
	case Incomplete:
		return ErrLogoutIncomplete
	case Canceled:
		return ErrCanceled
	}
	return ErrLogoutFailed
}

// String returns "success", "session not found", "failed", "incomplete" or
// "canceled".
func (o Outcome) String() string {
	switch o {
	case Success:
		return "success"
	case SessionNotFound:
		return "session not found"
	case Failed:
		return "failed"
	case Incomplete:
		return "incomplete"
	case Canceled:
		return "canceled"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// MarshalText encodes the outcome as its String.
func (o Outcome) MarshalText() ([]byte, error) { return []byte(o.String()), nil }

// aggregate computes the outcome from how many sessions there were and how
// many logged out.
func aggregate(total, loggedOut int) Outcome {
	switch {
	case total == 0:
		return SessionNotFound
	case loggedOut == total:
		return Success
	case loggedOut == 0:
		return Failed
	}
	return Incomplete
}
