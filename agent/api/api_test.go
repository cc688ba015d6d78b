package api

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/pdu"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestLogoutRoundTrip: a result encoded, sent as JSON and decoded is the
// result again (errors as their text), so the CLI prints the agent's
// logout as it prints its own.
func TestLogoutRoundTrip(t *testing.T) {
	in := &logout.Result{Target: "iqn.2026-01.org.goiscsi.test:rt", Outcome: logout.Incomplete, Duration: 1234567 * time.Microsecond,
		Sessions: []logout.SessionResult{
			{TSIH: 7, ISID: [6]byte{0x80, 1, 2, 3, 4, 5}, LoggedOut: true, Conns: []logout.ConnResult{
				{CID: 0, Reason: pdu.LogoutCloseConnection, State: logout.ConnLoggedOut, Responded: true, Duration: 800 * time.Microsecond},
				{CID: 1, Reason: pdu.LogoutCloseConnection, State: logout.ConnClosedWithSession, Duration: time.Millisecond},
			}},
			{TSIH: 9, ISID: [6]byte{0x80, 9}, Forced: true, Conns: []logout.ConnResult{
				{CID: 0, Reason: pdu.LogoutCloseSession, State: logout.ConnRefused, Responded: true, Response: 3, Time2Wait: 2, Time2Retain: 20,
					FailedCommands: 4, Err: errors.New("refused: cleanup failed"), Duration: 3 * time.Millisecond},
			}},
		}}
	l := NewLogout(in, logout.PerSession)
	if l.HRESULT != "0x80042710" || l.ExitCode != 4 || l.LoggedOut != 1 || l.Strategy != "per-session" {
		t.Errorf("encoded: %+v", l)
	}
	b, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	var back Logout
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	out, strategy, err := back.Result()
	if err != nil || strategy != logout.PerSession {
		t.Fatalf("Result: %v, %v", strategy, err)
	}
	if out.Sessions[1].Conns[0].Err.Error() != "refused: cleanup failed" {
		t.Errorf("error text %v", out.Sessions[1].Conns[0].Err)
	}
	out.Sessions[1].Conns[0].Err = in.Sessions[1].Conns[0].Err
	if !reflect.DeepEqual(out, in) {
		t.Errorf("round trip:\n got %+v\nwant %+v", out, in)
	}

	for _, bad := range []Logout{{Strategy: "sideways", Outcome: "success"}, {Strategy: "per-session", Outcome: "meh"},
		{Strategy: "per-session", Outcome: "success", Sessions: []LogoutSession{{ISID: "xyz"}}},
		{Strategy: "per-session", Outcome: "success", Sessions: []LogoutSession{{ISID: "800102030405", Conns: []LogoutConn{{State: "dozing"}}}}}} {
		if _, _, err := bad.Result(); err == nil {
			t.Errorf("Result of %+v: no error", bad)
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
	for _, st := range []logout.ConnState{logout.ConnLoggedOut, logout.ConnClosedWithSession, logout.ConnRefused,
		logout.ConnTimeout, logout.ConnReset, logout.ConnRejected, logout.ConnCanceled, logout.ConnNotAttempted,
		logout.ConnError, logout.ConnClosed, logout.ConnUnreachable} {
		got, ok := parseConnState(st.String())
		if !ok || got != st {
			t.Errorf("%q: %v, %v", st.String(), got, ok)
		}
	}
}
