package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/goiscsi/iscsi/agent/api"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/goiscsi/iscsi/initiator"
	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
)

// Exit statuses. A logout's outcome decides the status of the commands that
// log out (logout, login, demo); every other failure is 1, or 5 when the
// command line itself was wrong.
const (
	exitOK         = 0
	exitError      = 1 // any other failure, a target's invalid answer included
	exitNotFound   = 2 // logout: no session to the target (VDS_E_ISCSI_SESSION_NOT_FOUND)
	exitFailed     = 3 // logout: no session logged out (VDS_E_ISCSI_LOGOUT_FAILED)
	exitIncomplete = 4 // logout: some sessions did not log out (VDS_E_ISCSI_LOGOUT_INCOMPLETE)
	exitInvalidArg = 5 // a malformed argument: bad flag, bad iSCSI name, LBA out of range (E_INVALIDARG)
	exitCanceled   = 6 // logout: canceled (interrupted) before it ended (VDS_E_OPERATION_CANCELED)
	// exitInterrupted is perf's status after Ctrl-C, as a shell gives a
	// command that SIGINT ended (128+2); perf prints what it measured and
	// logs out first.
	exitInterrupted = 130
)

var exitCodes = []struct {
	code    int
	meaning string
}{
	{exitOK, "success (for a logout: every session logged out, S_OK)"},
	{exitError, "any other error: connection refused, login refused, SCSI error, data mismatch, invalid answer from the target"},
	{exitNotFound, "logout: no session to the target (VDS_E_ISCSI_SESSION_NOT_FOUND 0x8004270A)"},
	{exitFailed, "logout: no session logged out (VDS_E_ISCSI_LOGOUT_FAILED 0x80042709)"},
	{exitIncomplete, "logout: some sessions logged out, some did not (VDS_E_ISCSI_LOGOUT_INCOMPLETE 0x80042710)"},
	{exitInvalidArg, "invalid argument: unknown flag or command, malformed iSCSI name given, out-of-range LBA (E_INVALIDARG)"},
	{exitCanceled, "logout: canceled by an interrupt before it ended (VDS_E_OPERATION_CANCELED 0x8004240D)"},
	{exitInterrupted, "perf: interrupted (Ctrl-C); what it measured until then is printed, and it logged out"},
}

// outcomeExit maps a logout outcome to the exit status (the agent's API
// reports the same, api.ExitCode).
func outcomeExit(o logout.Outcome) int { return api.ExitCode(o) }

// exitError is an error with its exit status; the message is already what
// the user should read.
type exitErr struct {
	code int
	msg  string
	// resultPrinted: the command printed its result (--json: the one
	// document), so the error is only said on stderr.
	resultPrinted bool
}

func (e *exitErr) Error() string { return e.msg }

// invalidArgf returns an error for a command line that is wrong.
func invalidArgf(format string, args ...any) error {
	return &exitErr{code: exitInvalidArg, msg: fmt.Sprintf(format, args...)}
}

// outcomeError carries a logout outcome other than Success whose result was
// already printed: only the status remains to be returned.
type outcomeError struct{ outcome logout.Outcome }

func (e *outcomeError) Error() string { return "logout " + e.outcome.String() }

// stepError says what the command was doing when err happened, so that the
// message can name the portal and the target.
type stepError struct {
	step    string // "logging in", "discovering targets", ...
	portal  string
	target  string
	timeout time.Duration // the bound of the step, for a deadline
	chap    bool          // the login used CHAP
	// chapUser and initiatorName are the CHAP user name and the initiator
	// name of the login, for the hint of a failed authentication.
	chapUser, initiatorName string
	err                     error
}

func (e *stepError) Error() string { return e.step + ": " + e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

// describe turns an error into the exit status and a message a user can act
// on: the address that refused, the target that does not exist, the login
// status with its code, rather than the chain of internal errors.
func describe(err error) (int, string) {
	var ee *exitErr
	if errors.As(err, &ee) {
		return ee.code, ee.msg
	}
	var oe *outcomeError
	if errors.As(err, &oe) {
		return outcomeExit(oe.outcome), "logout " + oe.outcome.String()
	}
	var step *stepError
	errors.As(err, &step)
	where := func() string {
		if step == nil {
			return ""
		}
		return " (" + step.step + ")"
	}

	var le *session.LoginError
	var ne *session.NegotiationError
	var se *session.SCSIError
	var rj *session.RejectError
	var dns *net.DNSError
	var pe *pdu.ProtocolError
	var op *net.OpError
	switch {
	case errors.Is(err, initiator.ErrInvalidArg):
		return exitInvalidArg, trimPrefixes(err.Error())
	case errors.Is(err, session.ErrShortSecret):
		return exitInvalidArg, "the CHAP secret is shorter than 12 bytes, which RFC 7143 allows only under IPsec; use --chap-allow-short-secret to send it anyway"
	case errors.As(err, &le):
		return exitError, loginMessage(le.Status, step)
	case errors.As(err, &ne):
		if strings.HasPrefix(ne.Key, "CHAP") {
			return exitError, "authentication failed: " + ne.Key + ": " + ne.Reason
		}
		if ne.Key == "" {
			return exitError, "login failed: " + ne.Reason
		}
		return exitError, "login failed: negotiating " + ne.Key + ": " + ne.Reason
	case errors.As(err, &dns):
		return exitError, fmt.Sprintf("cannot resolve host %q: %s", dns.Name, dns.Err)
	case errors.Is(err, syscall.ECONNREFUSED):
		return exitError, "connection refused at " + opAddr(err, step)
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return exitError, "no route to " + opAddr(err, step)
	case errors.As(err, &op) && op.Op == "dial" && (op.Timeout() || errors.Is(err, os.ErrDeadlineExceeded)):
		return exitError, "timed out connecting to " + opAddr(err, step)
	case errors.Is(err, context.DeadlineExceeded):
		if step != nil && step.timeout > 0 {
			return exitError, fmt.Sprintf("timed out after %s%s", step.timeout, where()+atPortal(step))
		}
		return exitError, "timed out" + where() + atPortal(step)
	case errors.Is(err, context.Canceled):
		return exitError, "interrupted" + where()
	case errors.Is(err, session.ErrConnReset):
		return exitError, "the target closed the connection" + where() + atPortal(step)
	case errors.Is(err, session.ErrDeadPeer):
		return exitError, "the target stopped answering (no NOP-In)" + where() + atPortal(step)
	case errors.Is(err, session.ErrBadCapacity):
		// "target returned invalid READ CAPACITY data: block size 0 ..."
		inner := err
		if step != nil {
			inner = step.err
		}
		return exitError, trimPrefixes(inner.Error()) + where()
	case errors.As(err, &se):
		msg := "SCSI command failed" + where() + ": " + trimPrefixes(se.Error())
		if w := senseWords(se); w != "" {
			msg += " (" + w + ")"
		}
		return exitError, msg
	case errors.As(err, &rj):
		return exitError, trimPrefixes(rj.Error()) + where()
	case errors.As(err, &pe):
		return exitError, "protocol error from the target" + where() + ": " + trimPrefixes(pe.Error())
	}
	if step != nil {
		return exitError, step.step + atPortal(step) + ": " + trimPrefixes(step.err.Error())
	}
	return exitError, trimPrefixes(err.Error())
}

// loginMessage words a login the target refused.
func loginMessage(st pdu.LoginStatus, step *stepError) string {
	target, portal := "", ""
	if step != nil {
		target, portal = step.target, step.portal
	}
	code := fmt.Sprintf("(0x%04x)", uint16(st))
	switch st {
	case pdu.LoginTargetNotFound:
		if target != "" && portal != "" {
			return fmt.Sprintf("target %s not found on portal %s %s", target, portal, code)
		}
		return "target not found on portal " + code
	case pdu.LoginTargetRemoved:
		return fmt.Sprintf("target %s was removed from portal %s %s", target, portal, code)
	case pdu.LoginAuthFailed:
		switch {
		case step != nil && !step.chap:
			// No secret was given: the target asks for one.
			return "authentication failed " + code + ": the target requires CHAP; give the secret with --chap-secret-file or $" + envCHAPSecret
		case step != nil && step.chapUser != "" && step.chapUser == step.initiatorName:
			return "authentication failed " + code + ": the CHAP user name was the initiator name " + step.chapUser +
				" (the default); if the target knows another user name, give it with --chap-user"
		}
		return "authentication failed " + code + ": check the CHAP user name and secret"
	case pdu.LoginAuthzFailed:
		return fmt.Sprintf("not authorized to log in to target %s %s", target, code)
	case pdu.LoginTooManyConnections:
		return "the target refuses more connections " + code
	case pdu.LoginServiceUnavailable, pdu.LoginOutOfResources:
		return "the target cannot take a login now: " + st.String()
	case pdu.LoginInitiatorError:
		if step != nil && step.chap {
			// tgtd picks SHA-256 from the list offered and then cannot
			// read the response.
			return "login refused: " + st.String() + "; if the target only handles CHAP with MD5, try --chap-algorithms md5"
		}
	}
	return "login refused: " + st.String()
}

// opAddr returns the remote address of the *net.OpError in err, else the
// step's portal.
func opAddr(err error, step *stepError) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Addr != nil {
		return op.Addr.String()
	}
	if step != nil && step.portal != "" {
		return step.portal
	}
	return "the portal"
}

func atPortal(step *stepError) string {
	if step == nil || step.portal == "" {
		return ""
	}
	return " at " + step.portal
}

// trimPrefixes removes the package prefixes ("iscsi: ") errors carry, which
// mean nothing to a user of the command.
func trimPrefixes(s string) string {
	for _, p := range []string{"iscsi: ", "capture: "} {
		s = strings.ReplaceAll(s, p, "")
	}
	return s
}
