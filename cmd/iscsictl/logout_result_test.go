package main

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/agent/api"
	"github.com/goiscsi/iscsi/logout"
	"github.com/goiscsi/iscsi/pdu"
)

// ladderResult is a session whose reason 0 was refused with Time2Wait 1 s on
// CID 0 and that logged out on CID 1 after it, and a session in use.
func ladderResult() *logout.Result {
	refusal := logout.Step{Kind: logout.StepLogout, Reason: pdu.LogoutCloseSession, State: logout.ConnRefused, Responded: true,
		Response: pdu.LogoutCleanupFailed, Time2Wait: 1, Time2Retain: 20, Commands: logout.Commands{Completed: 2, Unknown: 1},
		Duration: 2 * time.Millisecond}
	closeStep := logout.Step{Kind: logout.StepClose, State: logout.ConnClosed, At: 2 * time.Millisecond}
	retry := logout.Step{Kind: logout.StepLogout, Reason: pdu.LogoutCloseSession, State: logout.ConnLoggedOut, Responded: true,
		Waited: time.Second, At: time.Second + 2*time.Millisecond, Duration: time.Millisecond, Commands: logout.Commands{Aborted: 3}}
	return &logout.Result{Target: "iqn.2026-11.org.example:t", Outcome: logout.Incomplete, Deadline: 15 * time.Second,
		Duration: 1100 * time.Millisecond, Commands: logout.Commands{Completed: 2, Aborted: 3, Unknown: 1},
		Sessions: []logout.SessionResult{
			{TSIH: 1, LoggedOut: true, Commands: logout.Commands{Completed: 2, Aborted: 3, Unknown: 1}, Conns: []logout.ConnResult{
				{CID: 0, Reason: pdu.LogoutCloseSession, State: logout.ConnRefused, Responded: true, Response: pdu.LogoutCleanupFailed,
					Time2Wait: 1, Time2Retain: 20, Commands: refusal.Commands, Steps: []logout.Step{refusal, closeStep}},
				{CID: 1, Reason: pdu.LogoutCloseSession, State: logout.ConnLoggedOut, Responded: true, Commands: retry.Commands,
					Steps: []logout.Step{retry}},
			}},
			{TSIH: 2, InUse: errors.New("mounted on /data"), Conns: []logout.ConnResult{
				{CID: 0, State: logout.ConnNotAttempted, Err: logout.ErrInUse}}},
		}}
}

// The table shows each step of the ladder, the counts and why a session
// was left alone.
func TestLogoutTableLadder(t *testing.T) {
	var b strings.Builder
	printLogout(&b, ladderResult(), logout.PerSession)
	out := b.String()
	for _, want := range []string{
		"1. close session  refused",
		"2. TCP close",
		"after waiting Time2Wait 1s",
		"NOT logged out (in use)",
		"in use: mounted on /data",
		"Commands in flight: 2 completed, 3 aborted, 1 outcome unknown",
		"(deadline 15s)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

// --json has the steps with their reason, response and timing, the counts
// at every level, and the in-use reason.
func TestLogoutJSONLadder(t *testing.T) {
	raw, err := json.Marshal(api.NewLogout(ladderResult(), logout.PerSession))
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		HRESULT    string          `json:"hresult"`
		Commands   logout.Commands `json:"commands"`
		DeadlineMs float64         `json:"deadlineMs"`
		Sessions   []struct {
			InUse    string          `json:"inUse"`
			Commands logout.Commands `json:"commands"`
			Conns    []struct {
				Steps []struct {
					Kind     string  `json:"kind"`
					Reason   *int    `json:"reason"`
					State    string  `json:"state"`
					Response *int    `json:"response"`
					WaitedMs float64 `json:"waitedMs"`
				} `json:"steps"`
			} `json:"connections"`
		} `json:"sessions"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	if v.HRESULT != "0x80042710" || v.Commands != (logout.Commands{Completed: 2, Aborted: 3, Unknown: 1}) || v.DeadlineMs != 15000 {
		t.Fatalf("top: %+v", v)
	}
	s := v.Sessions[0]
	st := s.Conns[0].Steps
	if len(st) != 2 || st[0].Kind != "logout" || *st[0].Reason != 0 || st[0].State != "refused" || *st[0].Response != 3 ||
		st[1].Kind != "close" || st[1].Reason != nil {
		t.Fatalf("steps of CID 0: %s", raw)
	}
	if r := s.Conns[1].Steps; len(r) != 1 || r[0].WaitedMs != 1000 {
		t.Fatalf("retry: %s", raw)
	}
	if v.Sessions[1].InUse != "mounted on /data" || s.Commands != (logout.Commands{Completed: 2, Aborted: 3, Unknown: 1}) {
		t.Fatalf("sessions: %s", raw)
	}
}
