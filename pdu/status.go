package pdu

import "fmt"

// LoginStatus is a Login Response's Status-Class (high byte) and
// Status-Detail (low byte), §11.13.5.
type LoginStatus uint16

// Login statuses.
const (
	LoginSuccess              LoginStatus = 0x0000
	LoginTargetMovedTemp      LoginStatus = 0x0101
	LoginTargetMovedPerm      LoginStatus = 0x0102
	LoginInitiatorError       LoginStatus = 0x0200
	LoginAuthFailed           LoginStatus = 0x0201
	LoginAuthzFailed          LoginStatus = 0x0202
	LoginTargetNotFound       LoginStatus = 0x0203
	LoginTargetRemoved        LoginStatus = 0x0204
	LoginUnsupportedVersion   LoginStatus = 0x0205
	LoginTooManyConnections   LoginStatus = 0x0206
	LoginMissingParameter     LoginStatus = 0x0207
	LoginCantIncludeInSession LoginStatus = 0x0208
	LoginSessionTypeNotSupp   LoginStatus = 0x0209
	LoginSessionDoesNotExist  LoginStatus = 0x020a
	LoginInvalidDuringLogin   LoginStatus = 0x020b
	LoginTargetError          LoginStatus = 0x0300
	LoginServiceUnavailable   LoginStatus = 0x0301
	LoginOutOfResources       LoginStatus = 0x0302
)

var loginStatusNames = map[LoginStatus]string{
	LoginSuccess:              "success",
	LoginTargetMovedTemp:      "target moved temporarily",
	LoginTargetMovedPerm:      "target moved permanently",
	LoginInitiatorError:       "initiator error",
	LoginAuthFailed:           "authentication failure",
	LoginAuthzFailed:          "authorization failure",
	LoginTargetNotFound:       "target not found",
	LoginTargetRemoved:        "target removed",
	LoginUnsupportedVersion:   "unsupported version",
	LoginTooManyConnections:   "too many connections",
	LoginMissingParameter:     "missing parameter",
	LoginCantIncludeInSession: "cannot include connection in session",
	LoginSessionTypeNotSupp:   "session type not supported",
	LoginSessionDoesNotExist:  "session does not exist",
	LoginInvalidDuringLogin:   "invalid request during login",
	LoginTargetError:          "target error",
	LoginServiceUnavailable:   "service unavailable",
	LoginOutOfResources:       "out of resources",
}

// Class returns the Status-Class: 0 success, 1 redirection, 2 initiator
// error, 3 target error.
func (s LoginStatus) Class() uint8 { return uint8(s >> 8) }

// String returns the status in words with its code, e.g.
// "authentication failure (0x0201)".
func (s LoginStatus) String() string {
	if n, ok := loginStatusNames[s]; ok {
		return fmt.Sprintf("%s (0x%04x)", n, uint16(s))
	}
	switch s.Class() {
	case 1:
		return fmt.Sprintf("redirection (0x%04x)", uint16(s))
	case 2:
		return fmt.Sprintf("initiator error (0x%04x)", uint16(s))
	case 3:
		return fmt.Sprintf("target error (0x%04x)", uint16(s))
	}
	return fmt.Sprintf("unknown login status (0x%04x)", uint16(s))
}

var rejectNames = map[RejectReason]string{
	RejectDataDigestError:     "data digest error",
	RejectSNACKReject:         "SNACK reject",
	RejectProtocolError:       "protocol error",
	RejectCommandNotSupported: "command not supported",
	RejectImmediateCommand:    "immediate command reject",
	RejectTaskInProgress:      "task in progress",
	RejectInvalidDataACK:      "invalid data ack",
	RejectInvalidPDUField:     "invalid PDU field",
	RejectLongOpReject:        "long operation reject",
	RejectDeprecated:          "deprecated MaxCmdSN reject",
	RejectWaitingForLogout:    "waiting for logout",
}

// String names the reason with its code, e.g. "protocol error (0x04)".
func (r RejectReason) String() string {
	if n, ok := rejectNames[r]; ok {
		return fmt.Sprintf("%s (0x%02x)", n, uint8(r))
	}
	return fmt.Sprintf("reason 0x%02x", uint8(r))
}

var logoutReasonNames = [...]string{
	LogoutCloseSession:      "close the session",
	LogoutCloseConnection:   "close the connection",
	LogoutRemoveForRecovery: "remove the connection for recovery",
}

// String names the reason, e.g. "close the session".
func (r LogoutReason) String() string {
	if int(r) < len(logoutReasonNames) {
		return logoutReasonNames[r]
	}
	return fmt.Sprintf("reason %d", uint8(r))
}

var logoutRespNames = [...]string{
	LogoutSuccess:             "success",
	LogoutCIDNotFound:         "CID not found",
	LogoutRecoveryUnsupported: "connection recovery not supported",
	LogoutCleanupFailed:       "cleanup failed",
}

// String names the response, e.g. "cleanup failed".
func (r LogoutResponseCode) String() string {
	if int(r) < len(logoutRespNames) {
		return logoutRespNames[r]
	}
	return fmt.Sprintf("response %d", uint8(r))
}

var asyncNames = [...]string{
	AsyncSCSIEvent:          "SCSI async event",
	AsyncLogoutRequest:      "target requests logout",
	AsyncConnectionDrop:     "target will drop connection",
	AsyncSessionDrop:        "target will drop all connections",
	AsyncNegotiationRequest: "target requests parameter negotiation",
	AsyncTaskTermination:    "all active tasks terminated",
}

// String names the event, e.g. "target requests logout".
func (e AsyncEvent) String() string {
	if int(e) < len(asyncNames) {
		return asyncNames[e]
	}
	if e == AsyncVendorSpecific {
		return "vendor-specific event"
	}
	return fmt.Sprintf("event %d", uint8(e))
}

var tmFunctionNames = [...]string{
	TMFAbortTask:        "ABORT TASK",
	TMFAbortTaskSet:     "ABORT TASK SET",
	TMFClearACA:         "CLEAR ACA",
	TMFClearTaskSet:     "CLEAR TASK SET",
	TMFLogicalUnitReset: "LOGICAL UNIT RESET",
	TMFTargetWarmReset:  "TARGET WARM RESET",
	TMFTargetColdReset:  "TARGET COLD RESET",
	TMFTaskReassign:     "TASK REASSIGN",
}

// String names the function, e.g. "ABORT TASK".
func (f TMFunction) String() string {
	if int(f) < len(tmFunctionNames) && tmFunctionNames[f] != "" {
		return tmFunctionNames[f]
	}
	return fmt.Sprintf("function %d", uint8(f))
}

var tmfRespNames = map[TMResponse]string{
	TMFComplete:            "function complete",
	TMFNoSuchTask:          "task does not exist",
	TMFNoSuchLUN:           "LUN does not exist",
	TMFTaskStillAllegiant:  "task still allegiant",
	TMFReassignUnsupported: "task allegiance reassignment not supported",
	TMFNotSupported:        "function not supported",
	TMFAuthorizationFailed: "function authorization failed",
	TMFRejected:            "function rejected",
}

// String names the response, e.g. "function complete".
func (r TMResponse) String() string {
	if n, ok := tmfRespNames[r]; ok {
		return n
	}
	return fmt.Sprintf("response %d", uint8(r))
}
