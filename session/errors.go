package session

import (
	"errors"
	"fmt"

	"github.com/goiscsi/iscsi/pdu"
)

var (
	// ErrClosed reports use of a connection or session that has been closed.
	ErrClosed = errors.New("iscsi: connection closed")
	// ErrNotSent fails a command that was never sent: its connection or
	// session is logging out, logged out or closed, its context ended
	// before the CmdSN window opened. The target never saw it.
	ErrNotSent = errors.New("iscsi: command not sent")
	// errLoggingOut is ErrNotSent on a connection that takes no commands
	// because it is logging out or logged out.
	errLoggingOut = fmt.Errorf("%w: the connection is logging out or logged out", ErrNotSent)
	// ErrLoggedOut fails a command that could not finish because its
	// connection or session logged out; the target may not have executed it.
	ErrLoggedOut = errors.New("iscsi: logged out before the command completed; its outcome on the target is unknown")
	// ErrLogoutTimeout reports a Logout Request that got no answer in time.
	ErrLogoutTimeout = errors.New("iscsi: no logout response before the deadline")
	// ErrLogoutRunning is the error of a Logout that met a logout of the
	// same connection begun elsewhere (the target's request, another
	// caller) and whose own deadline came first: that logout goes on, and
	// its outcome is not known yet.
	ErrLogoutRunning = errors.New("iscsi: logout still running at the caller's deadline; its outcome is not known")
	// ErrDeadPeer reports a connection whose target stopped answering NOP-Outs.
	ErrDeadPeer = errors.New("iscsi: target did not answer NOP-Out before the deadline")
	// ErrConnReset reports a connection the target closed or reset.
	ErrConnReset = errors.New("iscsi: connection closed by the target")
	// ErrOutcomeUnknown fails a command that was sent (in whole or in part)
	// and did not complete: the target may or may not have executed it. A
	// write that fails with it may have changed the medium.
	ErrOutcomeUnknown = errors.New("iscsi: command did not complete, its outcome on the target is unknown")
	// ErrWriteStalled ends a connection whose target took none of a write
	// for NOPTimeout: it stopped reading (a zero TCP window), so nothing
	// sent on the connection can complete.
	ErrWriteStalled = fmt.Errorf("iscsi: the target stopped reading (no data taken before the deadline): %w", ErrConnReset)
	// ErrShortSecret refuses a CHAP secret shorter than 12 bytes (RFC 7143 §12.1.3).
	ErrShortSecret = errors.New("iscsi: CHAP secret shorter than 12 bytes")
)

// LoginError is a login the target refused, with its status in words.
type LoginError struct {
	Status pdu.LoginStatus
}

func (e *LoginError) Error() string { return "iscsi: login failed: " + e.Status.String() }

// NegotiationError reports a login that failed on the initiator's side:
// a key the target answered wrongly, a CHAP check that failed, a broken PDU.
type NegotiationError struct {
	Key    string
	Reason string
}

func (e *NegotiationError) Error() string {
	if e.Key == "" {
		return "iscsi: login: " + e.Reason
	}
	return fmt.Sprintf("iscsi: login: %s: %s", e.Key, e.Reason)
}

// ShortTransferError is a write whose target reported GOOD status without
// having taken all the data: less than the whole (less any residual it
// reported) was asked for with R2T or sent unsolicited. The write is not
// done; it matches ErrOutcomeUnknown, since the part sent may have been
// written.
type ShortTransferError struct {
	Done int // bytes sent
	Want int // bytes the target had to take
}

func (e *ShortTransferError) Error() string {
	return fmt.Sprintf("iscsi: target reported GOOD status after taking %d of the %d bytes of the write; the write is not done", e.Done, e.Want)
}

// Unwrap makes a short write match ErrOutcomeUnknown.
func (e *ShortTransferError) Unwrap() error { return ErrOutcomeUnknown }

// RejectError is a PDU the target rejected.
type RejectError struct {
	Reason pdu.RejectReason
	Op     pdu.Opcode // opcode of the rejected PDU
}

func (e *RejectError) Error() string {
	return fmt.Sprintf("iscsi: target rejected %s: %s", e.Op, e.Reason.String())
}

// SCSIError is a command that ended with a SCSI status other than GOOD, or an
// iSCSI response other than "command completed at target".
type SCSIError struct {
	Response uint8 // iSCSI response code
	Status   uint8 // SCSI status
	Sense    []byte
}

// SenseKey returns the sense key of fixed or descriptor format sense data, or -1.
func (e *SCSIError) SenseKey() int {
	k, _, _, ok, _ := parseSense(e.Sense)
	if !ok {
		return -1
	}
	return int(k)
}

// ASC returns the additional sense code and qualifier, or ok false.
func (e *SCSIError) ASC() (asc, ascq uint8, ok bool) {
	_, asc, ascq, _, ok = parseSense(e.Sense)
	return
}

func (e *SCSIError) Error() string {
	if e.Response != pdu.RespCommandCompleted {
		return fmt.Sprintf("iscsi: target failure (response 0x%02x)", e.Response)
	}
	k, asc, ascq, hasKey, hasASC := parseSense(e.Sense)
	switch {
	case hasASC:
		return fmt.Sprintf("iscsi: SCSI status 0x%02x, sense key 0x%x, ASC/ASCQ %02x/%02x", e.Status, k, asc, ascq)
	case hasKey:
		return fmt.Sprintf("iscsi: SCSI status 0x%02x, sense key 0x%x", e.Status, k)
	}
	return fmt.Sprintf("iscsi: SCSI status 0x%02x", e.Status)
}

// parseSense reads the sense key and, where the data is long enough, ASC and
// ASCQ from fixed (0x70/0x71) or descriptor (0x72/0x73) sense data (SPC-4
// §4.5). Short sense data (a target may send a byte or two) yields what it
// holds and no more.
func parseSense(s []byte) (key, asc, ascq uint8, hasKey, hasASC bool) {
	if len(s) < 1 {
		return
	}
	switch s[0] & 0x7f {
	case 0x70, 0x71:
		if len(s) >= 3 {
			key, hasKey = s[2]&0x0f, true
		}
		if len(s) >= 14 {
			asc, ascq, hasASC = s[12], s[13], true
		}
	case 0x72, 0x73:
		if len(s) >= 2 {
			key, hasKey = s[1]&0x0f, true
		}
		if len(s) >= 4 {
			asc, ascq, hasASC = s[2], s[3], true
		}
	}
	return
}

// IsUnitAttention reports whether err is a CHECK CONDITION with sense key
// UNIT ATTENTION.
func IsUnitAttention(err error) bool {
	var se *SCSIError
	return errors.As(err, &se) && se.Status == pdu.StatusCheckCondition && se.SenseKey() == 6
}
