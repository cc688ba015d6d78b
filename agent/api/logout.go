package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
)

// The logout result has one JSON encoding, Logout: the agent answers its
// logout endpoints with it, and `iscsictl logout --json` prints it under
// "logout" (docs/JSON.md, schemaVersion 1). Its protocol identifiers are
// strings of "0x" and lower-case hex digits, zero-padded to the field's
// width: a TSIH "0x0001", a CID "0x0000", an ISID "0x80f8f60a6040".

// HexTSIH is a TSIH in JSON: "0x0001".
type HexTSIH uint16

// MarshalJSON writes the TSIH as "0x" and four hex digits.
func (v HexTSIH) MarshalJSON() ([]byte, error) { return hexJSON(uint16(v), 4), nil }

// UnmarshalJSON reads "0x0001", or a number (the encoding of agents before
// the identifiers were strings).
func (v *HexTSIH) UnmarshalJSON(b []byte) error {
	n, err := unhexJSON(b, "TSIH")
	*v = HexTSIH(n)
	return err
}

// HexCID is a CID in JSON: "0x0000".
type HexCID uint16

// MarshalJSON writes the CID as "0x" and four hex digits.
func (v HexCID) MarshalJSON() ([]byte, error) { return hexJSON(uint16(v), 4), nil }

// UnmarshalJSON reads "0x0000", or a number (the encoding of agents before
// the identifiers were strings).
func (v *HexCID) UnmarshalJSON(b []byte) error {
	n, err := unhexJSON(b, "CID")
	*v = HexCID(n)
	return err
}

func hexJSON(v uint16, width int) []byte { return fmt.Appendf(nil, "\"0x%0*x\"", width, v) }

func unhexJSON(b []byte, what string) (uint16, error) {
	if len(b) > 0 && b[0] != '"' {
		// A number: the old encoding.
		v, err := strconv.ParseUint(string(bytes.TrimSpace(b)), 10, 16)
		if err != nil {
			return 0, fmt.Errorf("%s %s: want \"0x\" and 4 hex digits", what, b)
		}
		return uint16(v), nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return 0, fmt.Errorf("%s %s: want \"0x\" and 4 hex digits", what, b)
	}
	h, ok := strings.CutPrefix(s, "0x")
	if !ok || len(h) == 0 || len(h) > 4 {
		return 0, fmt.Errorf("%s %q: want \"0x\" and 4 hex digits", what, s)
	}
	v, err := strconv.ParseUint(h, 16, 16)
	if err != nil {
		return 0, fmt.Errorf("%s %q: want \"0x\" and 4 hex digits", what, s)
	}
	return uint16(v), nil
}

// ISIDHex is an ISID in JSON notation: "0x" and 12 hex digits.
func ISIDHex(isid [6]byte) string { return fmt.Sprintf("0x%012x", isid[:]) }

// ParseISID parses an ISID of 12 hex digits, with or without "0x" (the
// logout result has it, the session list not).
func ParseISID(s string) ([6]byte, error) {
	var id [6]byte
	h := strings.TrimPrefix(s, "0x")
	if len(h) != 12 {
		return id, fmt.Errorf("ISID %q: want 12 hex digits", s)
	}
	for i := range id {
		b, err := strconv.ParseUint(h[2*i:2*i+2], 16, 8)
		if err != nil {
			return id, fmt.Errorf("ISID %q: want 12 hex digits", s)
		}
		id[i] = byte(b)
	}
	return id, nil
}

// Commands counts the commands in flight at a logout by how they ended;
// Total is their sum.
type Commands struct {
	Completed int `json:"completed"`
	Aborted   int `json:"aborted"`
	Unknown   int `json:"unknown"`
	Total     int `json:"total"`
}

// NewCommands encodes c.
func NewCommands(c logout.Commands) Commands {
	return Commands{Completed: c.Completed, Aborted: c.Aborted, Unknown: c.Unknown, Total: c.Total()}
}

// counts decodes c; Total, their sum, is not read.
func (c Commands) counts() logout.Commands {
	return logout.Commands{Completed: c.Completed, Aborted: c.Aborted, Unknown: c.Unknown}
}

// Logout is a logout result: the answer of the agent's logout endpoints
// under "logout", and what `iscsictl logout --json` prints under "logout".
type Logout struct {
	Target   string          `json:"target"`
	Outcome  string          `json:"outcome"`
	HRESULT  string          `json:"hresult"`
	ExitCode int             `json:"exitCode"`
	Strategy string          `json:"strategy"`
	Sessions []LogoutSession `json:"sessions"`
	// SessionCount is len(Sessions) = LoggedOut + NotLoggedOut.
	SessionCount int `json:"sessionCount"`
	LoggedOut    int `json:"loggedOut"`
	NotLoggedOut int `json:"notLoggedOut"`
	// LoggedOutOrGone is true for success and for "session not found".
	LoggedOutOrGone bool     `json:"loggedOutOrGone"`
	Commands        Commands `json:"commands"`
	// DeadlineMs is the operation's deadline, DurationMs the time it took.
	DeadlineMs float64 `json:"deadlineMs"`
	DurationMs float64 `json:"durationMs"`
	// Requested is true when the target asked for the logout; Parameter3
	// is then the seconds it gave (0: at once).
	Requested  bool    `json:"targetRequested,omitempty"`
	Parameter3 *uint16 `json:"parameter3,omitempty"`
}

// LogoutSession is one session of a Logout.
type LogoutSession struct {
	TSIH      HexTSIH `json:"tsih"`
	ISID      string  `json:"isid"`
	LoggedOut bool    `json:"loggedOut"`
	Forced    bool    `json:"forced"`
	// InUse says why the session was in use (and left as it was, unless
	// forced); empty when it was not.
	InUse string `json:"inUse,omitempty"`
	// StateAtStart is the session's state when the logout began: "up",
	// "recovering", "failed" or "lost".
	StateAtStart string `json:"stateAtStart"`
	// RetainUntil (RFC 3339, UTC), for a session with no connection that
	// was not logged out, is when the target has surely dropped it; until
	// then it may keep it, and its reservations.
	RetainUntil string       `json:"retainUntil,omitempty"`
	Commands    Commands     `json:"commands"`
	Conns       []LogoutConn `json:"connections"`
}

// LogoutConn is one connection of a LogoutSession.
type LogoutConn struct {
	CID       HexCID           `json:"cid"`
	Reason    pdu.LogoutReason `json:"reason"`
	State     string           `json:"state"`
	Responded bool             `json:"responded"`
	// Response, Time2Wait and Time2Retain are the Logout Response's, set
	// when one came (Responded).
	Response       *pdu.LogoutResponseCode `json:"response,omitempty"`
	Time2Wait      *uint16                 `json:"time2wait,omitempty"`
	Time2Retain    *uint16                 `json:"time2retain,omitempty"`
	Error          string                  `json:"error,omitempty"`
	FailedCommands int                     `json:"failedCommands"`
	Commands       Commands                `json:"commands"`
	DurationMs     float64                 `json:"durationMs"`
	Steps          []LogoutStep            `json:"steps"`
}

// LogoutStep is one step of the escalation ladder on a connection.
type LogoutStep struct {
	// Kind is "logout" (a Logout Request) or "close" (TCP).
	Kind string `json:"kind"`
	// Reason is the Logout Request's reason code; absent for a close.
	Reason      *pdu.LogoutReason       `json:"reason,omitempty"`
	State       string                  `json:"state"`
	Response    *pdu.LogoutResponseCode `json:"response,omitempty"`
	Time2Wait   *uint16                 `json:"time2wait,omitempty"`
	Time2Retain *uint16                 `json:"time2retain,omitempty"`
	Error       string                  `json:"error,omitempty"`
	Commands    Commands                `json:"commands"`
	// WaitedMs is the refusal's Time2Wait waited for before the step.
	WaitedMs float64 `json:"waitedMs,omitempty"`
	// AtMs is when the step began, from the start of the operation.
	AtMs       float64 `json:"atMs"`
	DurationMs float64 `json:"durationMs"`
}

// NewLogout encodes a logout result; errors are written as their text
// without the package prefixes (TrimPrefixes).
func NewLogout(r *logout.Result, strategy logout.Strategy) Logout {
	out := Logout{Target: r.Target, Outcome: r.Outcome.String(), HRESULT: HRESULT(r.HRESULT()),
		ExitCode: ExitCode(r.Outcome), Strategy: strategy.String(), Sessions: []LogoutSession{},
		SessionCount: len(r.Sessions), LoggedOut: r.LoggedOut(), NotLoggedOut: len(r.Sessions) - r.LoggedOut(),
		LoggedOutOrGone: r.LoggedOutOrGone(), Commands: NewCommands(r.Commands),
		DeadlineMs: ms(r.Deadline), DurationMs: ms(r.Duration), Requested: r.Requested}
	if r.Requested {
		p3 := r.Parameter3
		out.Parameter3 = &p3
	}
	for _, s := range r.Sessions {
		sj := LogoutSession{TSIH: HexTSIH(s.TSIH), ISID: ISIDHex(s.ISID), LoggedOut: s.LoggedOut, Forced: s.Forced,
			StateAtStart: s.State.String(), RetainUntil: stamp(s.RetainUntil), Commands: NewCommands(s.Commands),
			Conns: []LogoutConn{}}
		if s.InUse != nil {
			sj.InUse = TrimPrefixes(s.InUse.Error())
		}
		for _, c := range s.Conns {
			cj := LogoutConn{CID: HexCID(c.CID), Reason: c.Reason, State: c.State.String(), Responded: c.Responded,
				FailedCommands: c.FailedCommands, Commands: NewCommands(c.Commands), DurationMs: ms(c.Duration),
				Steps: []LogoutStep{}}
			for _, st := range c.Steps {
				cj.Steps = append(cj.Steps, newStep(&st))
			}
			if c.Responded {
				resp, t2w, t2r := c.Response, c.Time2Wait, c.Time2Retain
				cj.Response, cj.Time2Wait, cj.Time2Retain = &resp, &t2w, &t2r
			}
			if c.Err != nil {
				cj.Error = TrimPrefixes(c.Err.Error())
			}
			sj.Conns = append(sj.Conns, cj)
		}
		out.Sessions = append(out.Sessions, sj)
	}
	return out
}

func newStep(st *logout.Step) LogoutStep {
	sj := LogoutStep{Kind: st.Kind.String(), State: st.State.String(), Commands: NewCommands(st.Commands),
		WaitedMs: ms(st.Waited), AtMs: ms(st.At), DurationMs: ms(st.Duration)}
	if st.Kind == logout.StepLogout {
		reason := st.Reason
		sj.Reason = &reason
	}
	if st.Responded {
		resp, t2w, t2r := st.Response, st.Time2Wait, st.Time2Retain
		sj.Response, sj.Time2Wait, sj.Time2Retain = &resp, &t2w, &t2r
	}
	if st.Err != nil {
		sj.Error = TrimPrefixes(st.Err.Error())
	}
	return sj
}

// Result decodes l back into a logout result and its strategy: the steps,
// the command counts, the deadline, a session's in-use reason (as an error
// of its text), the target's request, the errors as their text. What is
// derived from the rest (hresult, exitCode, sessionCount, loggedOut,
// notLoggedOut, loggedOutOrGone, the totals) is not read. It refuses what
// no logout.Result encodes to: an unknown outcome, state, step kind or
// strategy, a malformed ISID.
func (l *Logout) Result() (*logout.Result, logout.Strategy, error) {
	var strategy logout.Strategy
	switch l.Strategy {
	case logout.PerConnection.String():
		strategy = logout.PerConnection
	case logout.PerSession.String():
		strategy = logout.PerSession
	default:
		return nil, 0, fmt.Errorf("logout result: unknown strategy %q", l.Strategy)
	}
	outcome, ok := parseOutcome(l.Outcome)
	if !ok {
		return nil, 0, fmt.Errorf("logout result: unknown outcome %q", l.Outcome)
	}
	r := &logout.Result{Target: l.Target, Outcome: outcome, Deadline: fromMs(l.DeadlineMs), Duration: fromMs(l.DurationMs),
		Requested: l.Requested, Parameter3: deref(l.Parameter3), Commands: l.Commands.counts()}
	for _, s := range l.Sessions {
		isid, err := ParseISID(s.ISID)
		if err != nil {
			return nil, 0, fmt.Errorf("logout result: session 0x%04x: %w", uint16(s.TSIH), err)
		}
		sr := logout.SessionResult{TSIH: uint16(s.TSIH), ISID: isid, LoggedOut: s.LoggedOut, Forced: s.Forced,
			Commands: s.Commands.counts()}
		// A result from an agent before these fields has neither: the
		// session was up, nothing was retained.
		if s.StateAtStart != "" {
			if sr.State, err = parseSessionState(s.StateAtStart); err != nil {
				return nil, 0, fmt.Errorf("logout result: session 0x%04x: %w", uint16(s.TSIH), err)
			}
		}
		if s.RetainUntil != "" {
			if sr.RetainUntil, err = time.Parse(time.RFC3339Nano, s.RetainUntil); err != nil {
				return nil, 0, fmt.Errorf("logout result: session 0x%04x: retainUntil: %w", uint16(s.TSIH), err)
			}
		}
		if s.InUse != "" {
			sr.InUse = errors.New(s.InUse)
		}
		for _, c := range s.Conns {
			cr, err := c.result()
			if err != nil {
				return nil, 0, fmt.Errorf("logout result: session 0x%04x: %w", uint16(s.TSIH), err)
			}
			sr.Conns = append(sr.Conns, cr)
		}
		r.Sessions = append(r.Sessions, sr)
	}
	return r, strategy, nil
}

func (c *LogoutConn) result() (logout.ConnResult, error) {
	st, ok := parseConnState(c.State)
	if !ok {
		return logout.ConnResult{}, fmt.Errorf("CID 0x%04x: unknown connection state %q", uint16(c.CID), c.State)
	}
	cr := logout.ConnResult{CID: uint16(c.CID), Reason: c.Reason, State: st, Responded: c.Responded,
		FailedCommands: c.FailedCommands, Commands: c.Commands.counts(), Duration: fromMs(c.DurationMs)}
	cr.Response, cr.Time2Wait, cr.Time2Retain = deref(c.Response), deref(c.Time2Wait), deref(c.Time2Retain)
	if c.Error != "" {
		cr.Err = errors.New(c.Error)
	}
	for k, sj := range c.Steps {
		st, err := sj.step()
		if err != nil {
			return logout.ConnResult{}, fmt.Errorf("CID 0x%04x: step %d: %w", uint16(c.CID), k+1, err)
		}
		cr.Steps = append(cr.Steps, st)
	}
	return cr, nil
}

func (sj *LogoutStep) step() (logout.Step, error) {
	var st logout.Step
	switch sj.Kind {
	case logout.StepLogout.String():
		st.Kind = logout.StepLogout
	case logout.StepClose.String():
		st.Kind = logout.StepClose
	default:
		return st, fmt.Errorf("unknown step kind %q", sj.Kind)
	}
	state, ok := parseConnState(sj.State)
	if !ok {
		return st, fmt.Errorf("unknown state %q", sj.State)
	}
	st.State, st.Reason = state, deref(sj.Reason)
	// A response is encoded with its three fields, and only then.
	st.Responded = sj.Response != nil
	st.Response, st.Time2Wait, st.Time2Retain = deref(sj.Response), deref(sj.Time2Wait), deref(sj.Time2Retain)
	if sj.Error != "" {
		st.Err = errors.New(sj.Error)
	}
	st.Commands, st.Waited, st.At, st.Duration = sj.Commands.counts(), fromMs(sj.WaitedMs), fromMs(sj.AtMs), fromMs(sj.DurationMs)
	return st, nil
}

// deref is *p, or the zero value for nil.
func deref[T any](p *T) T {
	var v T
	if p != nil {
		v = *p
	}
	return v
}

// parseSessionState is the session.SessionState named s.
func parseSessionState(s string) (session.SessionState, error) {
	if st, ok := parseName(s, session.SessionState(32)); ok {
		return st, nil
	}
	return 0, fmt.Errorf("unknown session state %q", s)
}
