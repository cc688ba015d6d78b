// Package api holds the JSON types of the agent's control API (version 1),
// shared by the agent (package agent) and its client (cmd/iscsictl), and
// documented in docs/API.md.
//
// The logout result (Logout) has exactly the shape `iscsictl logout --json`
// prints under "logout", so that a script reads one schema whether the
// logout ran in the command or in the agent; Logout.Result turns it back
// into a logout.Result for the command's table.
package api

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/goiscsi/iscsi/agent/nodes"
	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/session"
)

// Version is the API version in every path (/v1/...) and in APIVersion
// fields.
const Version = 1

// Prefix is the path prefix of this version.
const Prefix = "/v1"

// VersionInfo is the answer of GET /v1/version.
type VersionInfo struct {
	APIVersion    int    `json:"apiVersion"`
	Module        string `json:"module"`
	ModuleVersion string `json:"moduleVersion"`
	Revision      string `json:"revision,omitempty"`
	GoVersion     string `json:"goVersion"`
	InitiatorName string `json:"initiatorName"`
	StateDir      string `json:"stateDir"`
	PID           int    `json:"pid"`
	StartedAt     string `json:"startedAt"`
}

// Session is one session the agent holds, as GET /v1/sessions lists it.
type Session struct {
	Target string `json:"target"`
	Portal string `json:"portal"`
	TSIH   uint16 `json:"tsih"`
	// ISID is 12 hex digits.
	ISID string `json:"isid"`
	// Connections are the CIDs of the connections up.
	Connections []uint16 `json:"connections"`
	// State is "logged in" (every connection takes commands), "logging
	// out" (some connection no longer takes commands: a logout runs or the
	// connection is ending), "recovering" (it lost its connections and
	// reinstates itself), "failed" (its recovery gave up), "lost" (it lost
	// its connections, without recovery) or "ended" (no connection left).
	State string `json:"state"`
	// Params are the negotiated parameters by their RFC 7143 keys.
	Params   map[string]any `json:"params"`
	Counters Counters       `json:"counters"`
	// Node is the target of the node record the session was opened for
	// (automatic start), else empty.
	Node       string `json:"node,omitempty"`
	LoggedInAt string `json:"loggedInAt"`
	// Recovery is what the session's recovery has done, and is doing
	// while it recovers.
	Recovery Recovery `json:"recovery"`
}

// Recovery is what a session's recovery has done: its reinstatements (ERL
// 0) and, at ErrorRecoveryLevel 2, its connection recoveries. Times are
// RFC 3339, UTC. `iscsictl perf`, `read` and `write` print the same.
type Recovery struct {
	// Reconnects counts the session's reinstatements; Retries the
	// commands sent again after one.
	Reconnects int    `json:"reconnects"`
	Retries    uint64 `json:"retriedCommands"`
	// LostAt is when the session last lost its last connection, Cause
	// why; absent if it never did.
	LostAt string `json:"lostAt,omitempty"`
	Cause  string `json:"cause,omitempty"`
	// Attempts counts the reconnect attempts of the current (or last)
	// recovery; LastError is the last one's error.
	Attempts  int    `json:"attempts,omitempty"`
	LastError string `json:"lastError,omitempty"`
	// NextTry and GiveUpAt, while the session recovers: when its next
	// attempt starts, and when recovery gives up (the replacement
	// timeout).
	NextTry  string `json:"nextTry,omitempty"`
	GiveUpAt string `json:"giveUpAt,omitempty"`
	// RetainUntil, while the session has no connection (recovering,
	// failed, lost): until when the target may keep it, and its
	// reservations.
	RetainUntil string `json:"retainUntil,omitempty"`
	// ConnRecoveries counts the connections lost and recovered from at
	// ErrorRecoveryLevel 2; CommandsMoved the commands moved to another
	// connection, CommandsNotMoved those that failed instead.
	ConnRecoveries   int `json:"connRecoveries,omitempty"`
	CommandsMoved    int `json:"commandsMoved,omitempty"`
	CommandsNotMoved int `json:"commandsNotMoved,omitempty"`
}

// NewRecovery encodes what s's recovery has done.
func NewRecovery(s *session.Session) Recovery {
	ri, ci := s.Recovery(), s.ConnRecovery()
	r := Recovery{Reconnects: ri.Reconnects, Retries: ri.Retries, Attempts: ri.Attempts,
		ConnRecoveries: ci.Recoveries, CommandsMoved: ci.Moved, CommandsNotMoved: ci.Failed}
	r.LostAt = stamp(ri.Since)
	if ri.Cause != nil {
		r.Cause = TrimPrefixes(ri.Cause.Error())
	}
	if ri.LastErr != nil {
		r.LastError = TrimPrefixes(ri.LastErr.Error())
	}
	switch ri.State {
	case session.SessionRecovering:
		r.NextTry, r.GiveUpAt = stamp(ri.NextTry), stamp(ri.Deadline)
		r.RetainUntil = stamp(ri.RetainUntil)
	case session.SessionFailed, session.SessionLost:
		r.RetainUntil = stamp(ri.RetainUntil)
	}
	return r
}

// Counters are what the agent can count of a session without touching its
// I/O path: the kernel's TCP byte counts of its connections (Linux
// TCP_INFO; absent elsewhere). Commands are not counted: the session does
// not expose a count.
type Counters struct {
	// BytesSent are the bytes the target acknowledged (tcpi_bytes_acked).
	BytesSent uint64 `json:"bytesSent"`
	// BytesReceived are tcpi_bytes_received.
	BytesReceived uint64 `json:"bytesReceived"`
	// Measured is false where the platform gives no TCP byte counts.
	Measured bool `json:"measured"`
}

// Sessions is the answer of GET /v1/sessions.
type Sessions struct {
	APIVersion int       `json:"apiVersion"`
	Sessions   []Session `json:"sessions"`
}

// Auth is the CHAP configuration of a login request. A secret comes from
// a file or an environment variable of the agent (SecretFile, SecretEnv),
// or inline (Secret) on the Unix socket only; the agent never logs or
// returns it.
type Auth struct {
	User             string `json:"user,omitempty"`
	Secret           string `json:"secret,omitempty"`
	SecretFile       string `json:"secretFile,omitempty"`
	SecretEnv        string `json:"secretEnv,omitempty"`
	TargetUser       string `json:"targetUser,omitempty"`
	TargetSecret     string `json:"targetSecret,omitempty"`
	TargetSecretFile string `json:"targetSecretFile,omitempty"`
	TargetSecretEnv  string `json:"targetSecretEnv,omitempty"`
	// Algorithms are CHAP_A values (5 MD5, 6 SHA-1, 7 SHA-256, 8
	// SHA3-256) in order of preference; empty means all, strongest first.
	Algorithms       []int `json:"algorithms,omitempty"`
	AllowShortSecret bool  `json:"allowShortSecret,omitempty"`
}

// Inline reports whether a carries a secret itself.
func (a *Auth) Inline() bool { return a != nil && (a.Secret != "" || a.TargetSecret != "") }

// LoginRequest is the body of POST /v1/sessions.
type LoginRequest struct {
	Portal string `json:"portal"`
	// Target may be empty when the portal offers exactly one target.
	Target string `json:"target,omitempty"`
	// Sessions to open (default 1), each with Connections (default 1).
	Sessions       int   `json:"sessions,omitempty"`
	Connections    int   `json:"connections,omitempty"`
	HeaderDigest   bool  `json:"headerDigest,omitempty"`
	DataDigest     bool  `json:"dataDigest,omitempty"`
	LoginTimeoutMs int64 `json:"loginTimeoutMs,omitempty"`
	Auth           *Auth `json:"auth,omitempty"`
	// ErrorRecoveryLevel is the highest level offered (0-2); absent means
	// the library's default, 2.
	ErrorRecoveryLevel *int `json:"errorRecoveryLevel,omitempty"`
	// Time2Retain is the DefaultTime2Retain offered, in seconds (0-3600,
	// default 0); above 0, a session at ErrorRecoveryLevel 2 moves a lost
	// connection's commands to another of its connections.
	Time2Retain int `json:"time2retain,omitempty"`
}

// LoginResponse is the answer of POST /v1/sessions: the sessions opened
// (201), which stay with the agent.
type LoginResponse struct {
	APIVersion int       `json:"apiVersion"`
	Target     string    `json:"target"`
	Portal     string    `json:"portal"`
	Sessions   []Session `json:"sessions"`
}

// LogoutRequest is the body of POST /v1/targets/{name}/logout, and the
// query of DELETE /v1/sessions/{tsih}.
type LogoutRequest struct {
	// Strategy is "per-connection" (default) or "per-session".
	Strategy string `json:"strategy,omitempty"`
	// DrainMs lets running commands finish for this long first.
	DrainMs int64 `json:"drainMs,omitempty"`
	// TimeoutMs bounds the wait for each Logout Response; default 15000.
	TimeoutMs int64 `json:"timeoutMs,omitempty"`
	// Force closes locally the sessions that did not log out.
	Force bool `json:"force,omitempty"`
}

// Options returns the logout options of r; errors wrap ErrInvalid.
func (r LogoutRequest) Options() (logout.Options, error) {
	var o logout.Options
	switch r.Strategy {
	case "", "per-connection", "connection":
		o.Strategy = logout.PerConnection
	case "per-session", "session":
		o.Strategy = logout.PerSession
	default:
		return o, fmt.Errorf("%w: strategy %q: want per-connection or per-session", ErrInvalid, r.Strategy)
	}
	if r.TimeoutMs < 0 || r.DrainMs < 0 {
		return o, fmt.Errorf("%w: timeoutMs and drainMs must not be negative", ErrInvalid)
	}
	o.Timeout = time.Duration(r.TimeoutMs) * time.Millisecond
	if o.Timeout == 0 {
		o.Timeout = 15 * time.Second
	}
	o.DrainTimeout = time.Duration(r.DrainMs) * time.Millisecond
	o.Force = r.Force
	return o, nil
}

// ErrInvalid marks a request the agent refuses as malformed (400).
var ErrInvalid = errors.New("invalid request")

// LogoutResponse is the answer of the logout endpoints. The HTTP status
// follows the outcome: 200 success, 404 session not found, 502 failed or
// incomplete; Error is then set too, with the outcome's HRESULT.
type LogoutResponse struct {
	APIVersion int    `json:"apiVersion"`
	Logout     Logout `json:"logout"`
	Error      *Error `json:"error,omitempty"`
}

// ExitCode is the iscsictl exit status of a logout outcome: 0 success, 2
// session not found, 3 failed, 4 incomplete, 6 canceled.
func ExitCode(o logout.Outcome) int {
	switch o {
	case logout.Success:
		return 0
	case logout.SessionNotFound:
		return 2
	case logout.Incomplete:
		return 4
	case logout.Canceled:
		return 6
	}
	return 3
}

// HRESULT formats a VDS HRESULT as the API and the CLI print it.
func HRESULT(h uint32) string { return fmt.Sprintf("0x%08X", h) }

// ms returns d in milliseconds with a fraction.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// TrimPrefixes removes the package prefixes ("iscsi: ") of errors, which
// mean nothing to a reader of the API.
func TrimPrefixes(s string) string {
	for _, p := range []string{"iscsi: ", "capture: "} {
		s = strings.ReplaceAll(s, p, "")
	}
	return s
}

func fromMs(v float64) time.Duration { return time.Duration(v*1000+0.5) * time.Microsecond }

func parseOutcome(s string) (logout.Outcome, bool) {
	for o := logout.Success; o <= logout.Incomplete; o++ {
		if o.String() == s {
			return o, true
		}
	}
	return 0, false
}

func parseConnState(s string) (logout.ConnState, bool) {
	// Every state the logout package names (a byte's worth: the engine
	// has a dozen).
	return parseName(s, logout.ConnState(255))
}

// parseName returns the value below limit whose String is s; an unnamed
// value prints as a number, which no name matches.
func parseName[T interface {
	~int | ~uint8
	String() string
}](s string, limit T) (T, bool) {
	for v := T(0); v < limit; v++ {
		if v.String() == s {
			return v, true
		}
	}
	return 0, false
}

// stamp writes t in RFC 3339, UTC, as the API writes every time; empty for
// the zero time.
func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// ParseTSIH parses a TSIH in decimal or with 0x in hex.
func ParseTSIH(s string) (uint16, error) {
	v, err := strconv.ParseUint(s, 0, 16)
	if err != nil || v == 0 {
		return 0, fmt.Errorf("%w: TSIH %q: want a number from 1 to 65535 (decimal, or hex with 0x)", ErrInvalid, s)
	}
	return uint16(v), nil
}

// Error is the body of every error answer, under "error".
type Error struct {
	// Message says what was wrong, for a person.
	Message string `json:"message"`
	// Kind is one of the Kind constants.
	Kind string `json:"kind"`
	// ExitCode is the iscsictl exit status for the error.
	ExitCode int `json:"exitCode"`
	// HRESULT is the VDS code where a logout is concerned.
	HRESULT string `json:"hresult,omitempty"`
	// LoginStatus is the target's login status (class<<8|detail) when a
	// login was refused.
	LoginStatus *uint16 `json:"loginStatus,omitempty"`
	// NegotiationKey and NegotiationReason describe a login that failed on
	// a key the target answered wrongly (a session.NegotiationError).
	NegotiationKey    string `json:"negotiationKey,omitempty"`
	NegotiationReason string `json:"negotiationReason,omitempty"`
	// Step is what the agent was doing ("logging in", "discovering
	// targets").
	Step string `json:"step,omitempty"`
}

// Error kinds.
const (
	KindInvalid      = "invalid-argument"  // 400
	KindNotFound     = "not-found"         // 404
	KindConflict     = "conflict"          // 409
	KindUnauthorized = "unauthorized"      // 401
	KindLogin        = "login-failed"      // 502
	KindShuttingDown = "shutting-down"     // 503
	KindInternal     = "internal"          // 500
	KindLogout       = "logout-incomplete" // 502, see LogoutResponse
)

// ErrorResponse wraps an Error.
type ErrorResponse struct {
	APIVersion int   `json:"apiVersion"`
	Error      Error `json:"error"`
}

// Nodes is the answer of GET /v1/nodes.
type Nodes struct {
	APIVersion int          `json:"apiVersion"`
	Nodes      []nodes.Node `json:"nodes"`
}

// NodeResponse is the answer of GET, PUT and POST on one node.
type NodeResponse struct {
	APIVersion int        `json:"apiVersion"`
	Node       nodes.Node `json:"node"`
	// Created is true when a POST or PUT made a new record.
	Created bool `json:"created,omitempty"`
}

// Params names a session's negotiated parameters with their RFC 7143 keys,
// as the agent's session list and `iscsictl login --json` print them.
func Params(p session.Params) map[string]any {
	digest := func(on bool) string {
		if on {
			return "CRC32C"
		}
		return "None"
	}
	m := map[string]any{
		"HeaderDigest":                   digest(p.HeaderDigest),
		"DataDigest":                     digest(p.DataDigest),
		"MaxConnections":                 p.MaxConnections,
		"InitialR2T":                     p.InitialR2T,
		"ImmediateData":                  p.ImmediateData,
		"MaxRecvDataSegmentLength":       p.MaxRecvDataSegmentLength,
		"TargetMaxRecvDataSegmentLength": p.TargetMaxRecvDataSegmentLength,
		"MaxBurstLength":                 p.MaxBurstLength,
		"FirstBurstLength":               p.FirstBurstLength,
		"DefaultTime2Wait":               p.DefaultTime2Wait,
		"DefaultTime2Retain":             p.DefaultTime2Retain,
		"MaxOutstandingR2T":              p.MaxOutstandingR2T,
		"DataPDUInOrder":                 p.DataPDUInOrder,
		"DataSequenceInOrder":            p.DataSequenceInOrder,
		"ErrorRecoveryLevel":             p.ErrorRecoveryLevel,
		"TargetPortalGroupTag":           p.TargetPortalGroupTag,
	}
	if p.TargetAlias != "" {
		m["TargetAlias"] = p.TargetAlias
	}
	return m
}
