package api

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// allConnStates is every connection state the logout engine names.
var allConnStates = []logout.ConnState{logout.ConnLoggedOut, logout.ConnClosedWithSession, logout.ConnRefused,
	logout.ConnTimeout, logout.ConnReset, logout.ConnRejected, logout.ConnCanceled, logout.ConnNotAttempted,
	logout.ConnError, logout.ConnClosed, logout.ConnUnreachable}

// roundTripResult is a logout with everything the encoding carries: the
// ladder's steps of both kinds (a refusal with its response, the TCP
// close with its error, the retry after Time2Wait), command counts at
// every level, the deadline, a session in use, the target's request, and a
// session with a connection in every state.
func roundTripResult() *logout.Result {
	refusal := logout.Step{Kind: logout.StepLogout, Reason: pdu.LogoutCloseSession, State: logout.ConnRefused, Responded: true,
		Response: pdu.LogoutCleanupFailed, Time2Wait: 1, Time2Retain: 20, Err: errors.New("refused: cleanup failed"),
		Commands: logout.Commands{Completed: 2, Unknown: 1}, At: 150 * time.Microsecond, Duration: 2 * time.Millisecond}
	closeStep := logout.Step{Kind: logout.StepClose, State: logout.ConnClosed, Err: errors.New("connection closed: use of closed network connection"),
		At: 2*time.Millisecond + 7*time.Microsecond, Duration: 3 * time.Microsecond}
	retry := logout.Step{Kind: logout.StepLogout, Reason: pdu.LogoutCloseSession, State: logout.ConnLoggedOut, Responded: true,
		Time2Retain: 0, Commands: logout.Commands{Aborted: 3}, Waited: time.Second, At: time.Second + 2*time.Millisecond,
		Duration: time.Millisecond}
	reason1 := logout.Step{Kind: logout.StepLogout, Reason: pdu.LogoutCloseConnection, State: logout.ConnTimeout,
		Err: errors.New("no Logout Response within 2s"), Commands: logout.Commands{Unknown: 5}, At: 3 * time.Second, Duration: 2 * time.Second}
	every := logout.SessionResult{TSIH: 0xabcd, ISID: [6]byte{0x80, 0xf8, 0xf6, 0x0a, 0x60, 0x40}}
	for i, st := range allConnStates {
		c := logout.ConnResult{CID: uint16(0x100 + i), Reason: pdu.LogoutCloseConnection, State: st,
			Duration: time.Duration(i+1) * time.Millisecond}
		if st != logout.ConnLoggedOut && st != logout.ConnClosedWithSession {
			c.Err = errors.New("state " + st.String())
		}
		if st == logout.ConnTimeout {
			c.Commands, c.FailedCommands, c.Steps = reason1.Commands, 5, []logout.Step{reason1, closeStep}
			every.Commands = reason1.Commands
		}
		every.Conns = append(every.Conns, c)
	}
	return &logout.Result{Target: "iqn.2026-01.org.goiscsi.test:rt", Outcome: logout.Incomplete, Deadline: 15 * time.Second,
		Duration: 1234567 * time.Microsecond, Requested: true, Parameter3: 30, Commands: logout.Commands{Completed: 2, Aborted: 3, Unknown: 6},
		Sessions: []logout.SessionResult{
			{TSIH: 7, ISID: [6]byte{0x80, 1, 2, 3, 4, 5}, LoggedOut: true, Commands: logout.Commands{Completed: 2, Aborted: 3, Unknown: 1},
				Conns: []logout.ConnResult{
					{CID: 0, Reason: pdu.LogoutCloseSession, State: logout.ConnRefused, Responded: true, Response: pdu.LogoutCleanupFailed,
						Time2Wait: 1, Time2Retain: 20, Err: refusal.Err, Commands: refusal.Commands, FailedCommands: 1,
						Duration: 2*time.Millisecond + 3*time.Microsecond, Steps: []logout.Step{refusal, closeStep}},
					{CID: 1, Reason: pdu.LogoutCloseSession, State: logout.ConnLoggedOut, Responded: true, Commands: retry.Commands,
						Duration: time.Millisecond, Steps: []logout.Step{retry}},
				}},
			{TSIH: 9, ISID: [6]byte{0x80, 9}, Forced: true, InUse: errors.New("mounted on /data"), State: session.SessionRecovering,
				RetainUntil: time.Date(2026, 12, 2, 4, 0, 20, 123456789, time.UTC), Conns: []logout.ConnResult{
					{CID: 0, Reason: pdu.LogoutCloseSession, State: logout.ConnNotAttempted, Err: errors.New("session in use: mounted on /data")},
				}},
			every,
		}}
}

// errTexts replaces every error of r by nil and returns their texts in
// order, so that two results compare with their errors as text.
func errTexts(r *logout.Result) []string {
	var out []string
	take := func(e *error) {
		if *e != nil {
			out = append(out, (*e).Error())
		} else {
			out = append(out, "")
		}
		*e = nil
	}
	for i := range r.Sessions {
		s := &r.Sessions[i]
		take(&s.InUse)
		for j := range s.Conns {
			c := &s.Conns[j]
			take(&c.Err)
			for k := range c.Steps {
				take(&c.Steps[k].Err)
			}
		}
	}
	return out
}

// TestLogoutRoundTrip: a result encoded, sent as JSON and decoded is the
// result again (errors as their text): the steps of both kinds, the
// command counts, the deadline, the in-use reason, the target's request,
// every connection state; so the CLI prints the agent's logout as it
// prints its own.
func TestLogoutRoundTrip(t *testing.T) {
	in := roundTripResult()
	for _, strategy := range []logout.Strategy{logout.PerSession, logout.PerConnection} {
		l := NewLogout(in, strategy)
		if l.HRESULT != "0x80042710" || l.ExitCode != 4 || l.LoggedOut != 1 || l.NotLoggedOut != 2 || l.SessionCount != 3 ||
			l.LoggedOutOrGone || l.Strategy != strategy.String() || l.DeadlineMs != 15000 || !l.Requested ||
			l.Commands != (Commands{Completed: 2, Aborted: 3, Unknown: 6, Total: 11}) || l.Parameter3 == nil || *l.Parameter3 != 30 {
			t.Errorf("encoded: %+v", l)
		}
		if s := l.Sessions[1]; s.StateAtStart != "recovering" || s.RetainUntil != "2026-12-02T04:00:20.123456789Z" ||
			l.Sessions[0].StateAtStart != "up" || l.Sessions[0].RetainUntil != "" {
			t.Errorf("sessions' state and retain time: %+v, %+v", l.Sessions[0], s)
		}
		b, err := json.Marshal(l)
		if err != nil {
			t.Fatal(err)
		}
		var back Logout
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		out, got, err := back.Result()
		if err != nil || got != strategy {
			t.Fatalf("Result: %v, %v", got, err)
		}
		want := roundTripResult()
		if g, w := errTexts(out), errTexts(want); !reflect.DeepEqual(g, w) {
			t.Errorf("error texts:\n got %q\nwant %q", g, w)
		}
		if !reflect.DeepEqual(out, want) {
			t.Errorf("round trip:\n got %+v\nwant %+v", out, want)
		}
	}
	// Every state survives on a connection and on a step, both step kinds
	// on the connection of the session with every state.
	out, _, err := func() (*logout.Result, logout.Strategy, error) {
		l := NewLogout(in, logout.PerSession)
		return l.Result()
	}()
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[logout.StepKind]bool{}
	for i, c := range out.Sessions[2].Conns {
		if c.State != allConnStates[i] {
			t.Errorf("connection %d: state %v, want %v", i, c.State, allConnStates[i])
		}
		for _, st := range c.Steps {
			kinds[st.Kind] = true
		}
	}
	if !kinds[logout.StepLogout] || !kinds[logout.StepClose] {
		t.Errorf("step kinds decoded: %v, want logout and close", kinds)
	}

	for _, bad := range []Logout{{Strategy: "sideways", Outcome: "success"}, {Strategy: "per-session", Outcome: "meh"},
		{Strategy: "per-session", Outcome: "success", Sessions: []LogoutSession{{ISID: "xyz"}}},
		{Strategy: "per-session", Outcome: "success", Sessions: []LogoutSession{{ISID: "0x800102030405", Conns: []LogoutConn{{State: "dozing"}}}}},
		{Strategy: "per-session", Outcome: "success", Sessions: []LogoutSession{{ISID: "0x800102030405",
			Conns: []LogoutConn{{State: "refused", Steps: []LogoutStep{{Kind: "jump", State: "refused"}}}}}}},
		{Strategy: "per-session", Outcome: "success", Sessions: []LogoutSession{{ISID: "0x800102030405",
			Conns: []LogoutConn{{State: "refused", Steps: []LogoutStep{{Kind: "close", State: "dozing"}}}}}}},
		{Strategy: "per-session", Outcome: "success", Sessions: []LogoutSession{{ISID: "0x800102030405", StateAtStart: "dozing"}}},
		{Strategy: "per-session", Outcome: "success", Sessions: []LogoutSession{{ISID: "0x800102030405", RetainUntil: "tomorrow"}}}} {
		if _, _, err := bad.Result(); err == nil {
			t.Errorf("Result of %+v: no error", bad)
		}
	}
	// An agent before stateAtStart and retainUntil: the session was up.
	var old Logout
	if err := json.Unmarshal([]byte(`{"strategy":"per-session","outcome":"success","sessions":[{"tsih":"0x0001","isid":"0x800102030405","loggedOut":true}]}`), &old); err != nil {
		t.Fatal(err)
	}
	if r, _, err := old.Result(); err != nil || r.Sessions[0].State != session.SessionUp || !r.Sessions[0].RetainUntil.IsZero() || r.Parameter3 != 0 {
		t.Errorf("older encoding: %+v, %v", r, err)
	}
}

// The identifiers are written "0x" and four hex digits, the ISID "0x" and
// twelve; the numbers and bare ISID of agents before are still read, and a
// malformed identifier is refused.
func TestLogoutIdentifiers(t *testing.T) {
	l := NewLogout(&logout.Result{Outcome: logout.Success, Sessions: []logout.SessionResult{{TSIH: 1, ISID: [6]byte{0x80, 0xf8, 0xf6, 0x0a, 0x60, 0x40},
		LoggedOut: true, Conns: []logout.ConnResult{{CID: 0x1a, State: logout.ConnLoggedOut}}}}}, logout.PerConnection)
	b, err := json.Marshal(l.Sessions[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"tsih":"0x0001"`, `"isid":"0x80f8f60a6040"`, `"cid":"0x001a"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("%s lacks %s", b, want)
		}
	}
	old := `{"target":"t","outcome":"success","strategy":"per-connection","sessions":[{"tsih":258,"isid":"80f8f60a6040",` +
		`"loggedOut":true,"connections":[{"cid":3,"reason":1,"state":"logged out","responded":true}]}]}`
	var back Logout
	if err := json.Unmarshal([]byte(old), &back); err != nil {
		t.Fatalf("older agent's answer: %v", err)
	}
	r, _, err := back.Result()
	if err != nil || r.Sessions[0].TSIH != 258 || r.Sessions[0].ISID != [6]byte{0x80, 0xf8, 0xf6, 0x0a, 0x60, 0x40} ||
		r.Sessions[0].Conns[0].CID != 3 || !r.Sessions[0].Conns[0].Responded {
		t.Fatalf("older agent's answer decoded to %+v, %v", r, err)
	}
	for _, bad := range []string{`"1"`, `"0x"`, `"0x10000"`, `"0xzz"`, `65536`, `-1`, `true`} {
		var v HexTSIH
		if err := json.Unmarshal([]byte(bad), &v); err == nil || !strings.Contains(err.Error(), "TSIH") {
			t.Errorf("TSIH %s: %v, want an error naming the TSIH", bad, err)
		}
		var c HexCID
		if err := json.Unmarshal([]byte(bad), &c); err == nil || !strings.Contains(err.Error(), "CID") {
			t.Errorf("CID %s: %v, want an error naming the CID", bad, err)
		}
	}
}

func TestParseTSIH(t *testing.T) {
	for s, want := range map[string]uint16{"1": 1, "0x0001": 1, "0X10": 16, "65535": 65535} {
		if got, err := ParseTSIH(s); err != nil || got != want {
			t.Errorf("ParseTSIH(%q) = %d, %v", s, got, err)
		}
	}
	for _, s := range []string{"0", "65536", "-1", "x", ""} {
		if _, err := ParseTSIH(s); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseTSIH(%q): %v", s, err)
		}
	}
}

// Every connection state the logout engine names survives the API: a
// logout through the agent that closed a connection (the ladder's TCP
// close) or met an unreachable session decodes.
func TestConnStatesRoundTrip(t *testing.T) {
	for _, st := range allConnStates {
		got, ok := parseConnState(st.String())
		if !ok || got != st {
			t.Errorf("%q: %v, %v", st.String(), got, ok)
		}
	}
}
