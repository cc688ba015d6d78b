package main

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/testutil"
	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/pdu"
)

// singleName is the iSCSI name of the targets of the single-session logout
// tests.
const singleName = "iqn.2026-01.org.goiscsi:single"

// logoutRecord is one Logout Request as the target received it.
type logoutRecord struct {
	tsih, cid uint16
	reason    pdu.LogoutReason
}

// logoutTarget starts an in-memory target (one 1 MiB LUN) that records the
// Logout Requests it gets, in order, and answers them normally.
func logoutTarget(t *testing.T) (*iscsitest.Target, func() []logoutRecord) {
	t.Helper()
	var mu sync.Mutex
	var got []logoutRecord
	hook := func(ev *iscsitest.Event) iscsitest.Action {
		if r, ok := ev.PDU.(*pdu.LogoutRequest); ok {
			mu.Lock()
			got = append(got, logoutRecord{ev.TSIH, ev.CID, r.ReasonCode})
			mu.Unlock()
		}
		return iscsitest.Continue
	}
	tg := iscsitest.NewTarget(iscsitest.Config{Name: singleName, LUNs: []int64{1 << 20}, Hook: hook})
	t.Cleanup(tg.Close)
	return tg, func() []logoutRecord {
		mu.Lock()
		defer mu.Unlock()
		return append([]logoutRecord(nil), got...)
	}
}

// jsonID is an identifier of the JSON schema (docs/JSON.md): a "0x" hex
// string, as an int.
func jsonID(t *testing.T, v any) int {
	t.Helper()
	str, ok := v.(string)
	n, err := strconv.ParseUint(strings.TrimPrefix(str, "0x"), 16, 32)
	if !ok || !strings.HasPrefix(str, "0x") || err != nil {
		t.Fatalf("JSON: %v is not a 0x identifier", v)
	}
	return int(n)
}

// jsonInt is a JSON number as an int.
func jsonInt(t *testing.T, v any) int {
	t.Helper()
	f, ok := v.(float64)
	if !ok {
		t.Fatalf("JSON: %v is not a number", v)
	}
	return int(f)
}

// checkQuietAfter checks what the target saw: first the logout the command
// asked for (first), then one Logout Request on each connection the command
// opened and did not log out of (sessions × conns less first's), the quiet
// logout after the result; and no session is left.
func checkQuietAfter(t *testing.T, tg *iscsitest.Target, recs []logoutRecord, first logoutRecord, sessions, conns int) {
	t.Helper()
	if len(recs) == 0 || recs[0] != first {
		t.Fatalf("Logout Requests at the target %+v, want %+v first", recs, first)
	}
	type conn struct{ tsih, cid uint16 }
	left := map[conn]bool{}
	for tsih := 1; tsih <= sessions; tsih++ { // a fresh target numbers its sessions from 1
		for cid := 0; cid < conns; cid++ {
			left[conn{uint16(tsih), uint16(cid)}] = true
		}
	}
	delete(left, conn{first.tsih, first.cid})
	for _, r := range recs[1:] {
		if !left[conn{r.tsih, r.cid}] {
			t.Errorf("quiet logout %+v: not a connection left to log out of (requests %+v)", r, recs)
		}
		delete(left, conn{r.tsih, r.cid})
	}
	if len(left) != 0 {
		t.Errorf("connections %v not logged out quietly (requests %+v)", left, recs)
	}
	// The target ends a session as its Logout Response goes out: a poll
	// of its table, bounded.
	testutil.Eventually(t, 5*time.Second, "every session logged out at the target", func() (bool, string) {
		all := tg.Sessions()
		for _, s := range all {
			if !s.LoggedOut {
				return false, fmt.Sprintf("%+v", all)
			}
		}
		return len(all) == sessions, fmt.Sprintf("%d sessions: %+v", len(all), all)
	})
}

// TestLogoutSingleSession: `logout --session-index 2` of 3 sessions logs
// out only the second session opened: the result (JSON and table) has that
// one session, with the TSIH the target gave it; the target gets its Logout
// Request first and the other two sessions' after, once the result is out.
func TestLogoutSingleSession(t *testing.T) {
	t.Parallel()
	t.Run("JSON", func(t *testing.T) {
		t.Parallel()
		tg, recs := logoutTarget(t)
		v := iscsictl(t, "logout", "--target", singleName, "--portal", tg.Addr(), "--sessions", "3",
			"--session-index", "2", "--json").want(t, exitOK).json(t)
		if got := path(t, v, "logout", "outcome"); got != "success" {
			t.Errorf("outcome %v", got)
		}
		ss := path(t, v, "logout", "sessions").([]any)
		if len(ss) != 1 {
			t.Fatalf("%d sessions in the result, want 1: %v", len(ss), ss)
		}
		tsih := uint16(jsonID(t, path(t, v, "logout", "sessions", 0, "tsih")))
		if st := connStates(t, v, 0); len(st) != 1 || st[0] != "logged out" {
			t.Errorf("connections %v, want one logged out", st)
		}
		if got := path(t, v, "logout", "sessions", 0, "loggedOut"); got != true {
			t.Errorf("loggedOut %v", got)
		}
		checkQuietAfter(t, tg, recs(), logoutRecord{tsih, 0, pdu.LogoutCloseSession}, 3, 1)
	})
	t.Run("Table", func(t *testing.T) {
		t.Parallel()
		tg, recs := logoutTarget(t)
		r := iscsictl(t, "logout", "--target", singleName, "--portal", tg.Addr(), "--sessions", "3",
			"--session-index", "2").want(t, exitOK)
		rs := recs()
		if len(rs) == 0 {
			t.Fatal("no Logout Request at the target")
		}
		row := fmt.Sprintf("0x%04x", rs[0].tsih)
		for _, want := range []string{"Outcome: success (HRESULT 0x00000000): 1 of 1 sessions logged out", row, "close session  logged out"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
			}
		}
		for tsih := uint16(1); tsih <= 3; tsih++ {
			if other := fmt.Sprintf("0x%04x", tsih); tsih != rs[0].tsih && strings.Contains(r.stdout, other) {
				t.Errorf("the table shows session %s, not logged out by the command:\n%s", other, r.stdout)
			}
		}
		checkQuietAfter(t, tg, rs, logoutRecord{rs[0].tsih, 0, pdu.LogoutCloseSession}, 3, 1)
	})
}

// TestLogoutSingleConnection: `logout --session TSIH --cid 0` logs out that
// connection only: of a session of two connections, reason 1 on CID 0, the
// result one session with that one connection; then the sessions the
// command opened log out quietly.
func TestLogoutSingleConnection(t *testing.T) {
	t.Parallel()
	tg, recs := logoutTarget(t)
	// A fresh target numbers its sessions from 1: the second has TSIH 2.
	v := iscsictl(t, "logout", "--target", singleName, "--portal", tg.Addr(), "--sessions", "3", "--conns", "2",
		"--session", "2", "--cid", "0", "--json").want(t, exitOK).json(t)
	if got := path(t, v, "logout", "outcome"); got != "success" {
		t.Errorf("outcome %v", got)
	}
	ss := path(t, v, "logout", "sessions").([]any)
	if len(ss) != 1 || jsonID(t, path(t, v, "logout", "sessions", 0, "tsih")) != 2 {
		t.Fatalf("sessions in the result %v, want TSIH 2 alone", ss)
	}
	cs := path(t, v, "logout", "sessions", 0, "connections").([]any)
	if len(cs) != 1 || jsonID(t, path(t, v, "logout", "sessions", 0, "connections", 0, "cid")) != 0 ||
		jsonInt(t, path(t, v, "logout", "sessions", 0, "connections", 0, "reason")) != int(pdu.LogoutCloseConnection) ||
		path(t, v, "logout", "sessions", 0, "connections", 0, "state") != "logged out" {
		t.Fatalf("connections in the result %v, want CID 0 logged out with reason 1", cs)
	}
	// Then every other connection the command opened, session 2's CID 1
	// among them.
	checkQuietAfter(t, tg, recs(), logoutRecord{2, 0, pdu.LogoutCloseConnection}, 3, 2)
}

// TestLogoutGoneOK: with --sessions 0 there is nothing to log out of: the
// outcome printed stays "session not found", and --gone-ok makes it exit 0
// (without it, exit 2).
func TestLogoutGoneOK(t *testing.T) {
	t.Parallel()
	const target = "iqn.2001-04.com.example:gone"
	v := iscsictl(t, "logout", "--target", target, "--sessions", "0", "--gone-ok", "--json").want(t, exitOK).json(t)
	if got := path(t, v, "logout", "outcome"); got != "session not found" {
		t.Errorf("outcome %v", got)
	}
	r := iscsictl(t, "logout", "--target", target, "--sessions", "0", "--gone-ok").want(t, exitOK)
	if !strings.Contains(r.stdout, "Outcome: session not found (HRESULT 0x8004270A)") {
		t.Errorf("stdout:\n%s", r.stdout)
	}
	iscsictl(t, "logout", "--target", target, "--sessions", "0").want(t, exitNotFound)
	// --gone-ok does not turn a real session's logout into anything else.
	tg, _ := logoutTarget(t)
	iscsictl(t, "logout", "--target", singleName, "--portal", tg.Addr(), "--gone-ok").want(t, exitOK)
}
