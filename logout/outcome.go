// Package logout logs out of every session to one target at once, with a
// Logout Request/Response exchange on every connection, and aggregates what
// happened into one outcome with the Windows VDS codes.
//
// Start returns an Operation at once; the caller waits on it, asks for its
// progress or cancels it.
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
)

// HRESULTs of the outcomes.
const (
	HResultOK               = 0x00000000 // S_OK
	HResultSessionNotFound  = 0x8004270A // VDS_E_ISCSI_SESSION_NOT_FOUND
	HResultLogoutFailed     = 0x80042709 // VDS_E_ISCSI_LOGOUT_FAILED
	HResultLogoutIncomplete = 0x80042710 // VDS_E_ISCSI_LOGOUT_INCOMPLETE
	HResultInvalidArg       = 0x80070057 // E_INVALIDARG
)

// Errors matching the outcomes other than Success, for errors.Is.
var (
	ErrSessionNotFound  = errors.New("iscsi: no session to the target (VDS_E_ISCSI_SESSION_NOT_FOUND)")
	ErrLogoutFailed     = errors.New("iscsi: no session to the target logged out (VDS_E_ISCSI_LOGOUT_FAILED)")
	ErrLogoutIncomplete = errors.New("iscsi: some sessions to the target did not log out (VDS_E_ISCSI_LOGOUT_INCOMPLETE)")
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
	}
	return ErrLogoutFailed
}

// String returns "success", "session not found", "failed" or "incomplete".
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
