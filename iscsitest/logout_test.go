package iscsitest

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/pdu"
)

// waitFor polls cond until it holds or the wait ends.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func sessionByTSIH(tg *Target, tsih uint16) SessionInfo {
	for _, s := range tg.Sessions() {
		if s.TSIH == tsih {
			return s
		}
	}
	return SessionInfo{}
}

func TestLogoutCloseConnection(t *testing.T) {
	tg := newTarget(t, Config{})
	i := dial(t, tg)
	i.cid = 7
	i.login(loginOpts{})
	lr := i.logoutResp(pdu.LogoutCloseConnection, 7)
	if lr.Response != pdu.LogoutSuccess {
		t.Fatalf("logout: %+v", lr)
	}
	// The last connection of the session: the session ends with it.
	if s := sessionByTSIH(tg, i.tsih); !s.Ended || !s.LoggedOut || len(s.CIDs) != 0 {
		t.Fatalf("session after logout: %+v", s)
	}
	i.expectClosed(false)
	if st := tg.Stats(); st.Logouts[pdu.LogoutCloseConnection] != 1 {
		t.Fatalf("Stats().Logouts = %v", st.Logouts)
	}
}

func TestLogoutFailures(t *testing.T) {
	tg := newTarget(t, Config{})
	i := dial(t, tg)
	i.login(loginOpts{})
	if lr := i.logoutResp(pdu.LogoutCloseConnection, 5); lr.Response != pdu.LogoutCIDNotFound {
		t.Fatalf("logout of an unknown CID: %+v", lr)
	}
	if lr := i.logoutResp(pdu.LogoutRemoveForRecovery, 0); lr.Response != pdu.LogoutRecoveryUnsupported ||
		lr.Time2Wait != 2 || lr.Time2Retain != 20 {
		t.Fatalf("logout for recovery: %+v", lr)
	}
	p := i.logout(9, 0)
	rj, ok := p.(*pdu.Reject)
	if !ok {
		t.Fatalf("logout with reason 9: got %s, want Reject", p.Opcode())
	}
	if rj.Reason != pdu.RejectInvalidPDUField {
		t.Fatalf("Reject reason %#x", rj.Reason)
	}
	// None of these ended anything.
	if got := string(i.nop([]byte("still here"))); got != "still here" {
		t.Fatalf("NOP-In data %q", got)
	}
	if s := sessionByTSIH(tg, i.tsih); s.Ended || !slices.Equal(s.CIDs, []uint16{0}) {
		t.Fatalf("session: %+v", s)
	}
	if lr := i.logoutResp(pdu.LogoutCloseSession, 0); lr.Response != 0 {
		t.Fatalf("logout: %+v", lr)
	}
	i.expectClosed(false)
}

// mcs logs in a session of n connections with CIDs 0..n-1.
func mcs(t *testing.T, tg *Target, n int, op ...pdu.KV) []*ini {
	t.Helper()
	var cs []*ini
	for cid := range n {
		c := dial(t, tg)
		if cid > 0 {
			c.join(cs[0], uint16(cid))
		}
		c.login(loginOpts{op: append([]pdu.KV{{Key: "MaxConnections", Value: "8"}}, op...)})
		if c.tsih != cs0(cs, c).tsih {
			t.Fatalf("connection %d joined session %#x, want %#x", cid, c.tsih, cs[0].tsih)
		}
		cs = append(cs, c)
	}
	if s := sessionByTSIH(tg, cs[0].tsih); len(s.CIDs) != n {
		t.Fatalf("session: %+v", s)
	}
	return cs
}

func cs0(cs []*ini, c *ini) *ini {
	if len(cs) == 0 {
		return c
	}
	return cs[0]
}

func TestMCS(t *testing.T) {
	tg := newTarget(t, Config{ImmediateData: true})
	cs := mcs(t, tg, 3)
	// I/O on every connection, in one CmdSN sequence.
	for n, c := range cs {
		data := pattern(8192, byte(n))
		c.write(0, uint32(n*16), data)
		if got := cs[(n+1)%3].read(0, uint32(n*16), 16); !bytes.Equal(got.data, data) {
			t.Fatalf("connection %d: read differs", n)
		}
	}

	// A command ahead of ExpCmdSN on one connection waits for the one
	// before it on another.
	sn := *cs[0].cmdSN
	cs[1].send(&pdu.NOPOut{ITT: 0x1111, TTT: 0xffffffff, CmdSN: sn + 1}, nil)
	cs[1].expectSilence(100 * time.Millisecond)
	cs[0].send(&pdu.NOPOut{ITT: 0x2222, TTT: 0xffffffff, CmdSN: sn}, nil)
	*cs[0].cmdSN += 2
	for n, c := range cs[:2] {
		// Each response carries the ExpCmdSN of when it was sent.
		if p, _ := c.recv(); p.(*pdu.NOPIn).ExpCmdSN != sn+1+uint32(n) {
			t.Fatalf("connection %d: NOP-In %+v", n, p)
		}
	}

	// Reason 1 for CID 2, sent on CID 0: CID 2 is closed without a
	// response, CID 0 goes on.
	if lr := cs[0].logoutResp(pdu.LogoutCloseConnection, 2); lr.Response != 0 {
		t.Fatalf("logout of CID 2: %+v", lr)
	}
	if s := sessionByTSIH(tg, cs[0].tsih); !slices.Equal(s.CIDs, []uint16{0, 1}) || s.Ended {
		t.Fatalf("session after closing CID 2: %+v", s)
	}
	cs[2].expectClosed(false)
	cs[0].nop(nil)

	// Reason 0 on CID 1: the session ends, CID 0 is closed without a
	// response (RFC 7143 §8.1.3 T8).
	if lr := cs[1].logoutResp(pdu.LogoutCloseSession, 0); lr.Response != 0 {
		t.Fatalf("logout of the session: %+v", lr)
	}
	if s := sessionByTSIH(tg, cs[0].tsih); len(s.CIDs) != 0 || !s.Ended || !s.LoggedOut {
		t.Fatalf("session after logout: %+v", s)
	}
	cs[1].expectClosed(false)
	cs[0].expectClosed(false)
}

func TestMCSLimits(t *testing.T) {
	tg := newTarget(t, Config{MaxConnections: 2})
	cs := mcs(t, tg, 2)
	c := dial(t, tg)
	c.join(cs[0], 2)
	if st := c.tryLogin(loginOpts{}); st != pdu.LoginTooManyConnections {
		t.Fatalf("third connection: %s", st)
	}
	c.expectClosed(false)

	c = dial(t, tg)
	c.join(cs[0], 3)
	c.tsih++
	if st := c.tryLogin(loginOpts{}); st != pdu.LoginSessionDoesNotExist {
		t.Fatalf("unknown TSIH: %s", st)
	}

	// Connection reinstatement: a login with a CID in use replaces it.
	c = dial(t, tg)
	c.join(cs[0], 1)
	c.login(loginOpts{})
	cs[1].expectClosed(false)
	if s := sessionByTSIH(tg, cs[0].tsih); !slices.Equal(s.CIDs, []uint16{0, 1}) {
		t.Fatalf("after reinstatement: %+v", s)
	}
	c.nop(nil)

	// A session without MaxConnections negotiated takes one connection.
	one := dial(t, tg)
	one.isid[5] = 9
	one.login(loginOpts{})
	c = dial(t, tg)
	c.join(one, 1)
	if st := c.tryLogin(loginOpts{}); st != pdu.LoginTooManyConnections {
		t.Fatalf("second connection of a MaxConnections=1 session: %s", st)
	}
}

func TestSessionReinstatement(t *testing.T) {
	tg := newTarget(t, Config{})
	a := dial(t, tg)
	a.login(loginOpts{})
	b := dial(t, tg)
	b.login(loginOpts{})
	if a.tsih == b.tsih {
		t.Fatal("same TSIH for the new session")
	}
	a.expectClosed(false)
	if s := sessionByTSIH(tg, a.tsih); !s.Ended || s.LoggedOut {
		t.Fatalf("reinstated session: %+v", s)
	}
	b.nop(nil)
}

// TestConnectionLost checks the session timeout of RFC 7143 §6.3.5: a
// session whose last connection drops without a logout waits
// DefaultTime2Retain for a connection to continue it, then ends.
func TestConnectionLost(t *testing.T) {
	tg := newTarget(t, Config{})
	i := dial(t, tg)
	i.login(loginOpts{})
	i.nc.Close()
	waitFor(t, "the session to fail", func() bool { return sessionByTSIH(tg, i.tsih).Failed })
	if s := sessionByTSIH(tg, i.tsih); s.Ended || s.LoggedOut || len(s.CIDs) != 0 {
		t.Fatalf("failed session: %+v", s)
	}
	// Session continuation: a connection with the TSIH revives it.
	c := dial(t, tg)
	c.join(i, 1)
	c.login(loginOpts{})
	if s := sessionByTSIH(tg, i.tsih); s.Failed || s.Ended || len(s.CIDs) != 1 {
		t.Fatalf("continued session: %+v", s)
	}
	c.nc.Close()
	waitFor(t, "the session to fail again", func() bool { return sessionByTSIH(tg, i.tsih).Failed })
	// Session reinstatement: a leading login with the ISID replaces it.
	r := dial(t, tg)
	r.login(loginOpts{})
	if s := sessionByTSIH(tg, i.tsih); !s.Ended || s.Failed {
		t.Fatalf("reinstated session: %+v", s)
	}

	// Time2Retain passes: the session ends; with 0 it ends at once.
	for _, t2r := range []string{"1", "0"} {
		i := dial(t, tg)
		i.isid[5] = 0x20
		i.login(loginOpts{op: []pdu.KV{{Key: "DefaultTime2Retain", Value: t2r}}})
		start := time.Now()
		i.nc.Close()
		waitFor(t, "the session to end", func() bool { return sessionByTSIH(tg, i.tsih).Ended })
		if d := time.Since(start); t2r == "1" && d < 900*time.Millisecond {
			t.Fatalf("session with Time2Retain 1 ended after %v", d)
		}
		if s := sessionByTSIH(tg, i.tsih); s.LoggedOut || s.Failed {
			t.Fatalf("session lost without logout: %+v", s)
		}
	}
}

// TestMCSQueuedWrite sends a write and its unsolicited Data-Out on one
// connection ahead of the command before it on another: the data waits with
// the command for its CmdSN.
func TestMCSQueuedWrite(t *testing.T) {
	tg := newTarget(t, Config{})
	cs := mcs(t, tg, 2, pdu.KV{Key: "InitialR2T", Value: "No"})
	if cs[0].paramBool("InitialR2T", true) {
		t.Fatal("InitialR2T=Yes")
	}
	sn := *cs[0].cmdSN
	data := pattern(4096, 8)
	w := &pdu.SCSICommand{Write: true, ITT: 0x99, ExpectedDataTransferLength: 4096, CmdSN: sn + 1}
	copy(w.CDB[:], write10(10, 8))
	cs[1].send(w, nil)
	cs[1].sendData(data, 0x99, 0xffffffff, 0, 4096, 1024)
	cs[1].expectSilence(100 * time.Millisecond)
	cs[0].send(&pdu.NOPOut{ITT: 0x98, TTT: 0xffffffff, CmdSN: sn}, nil)
	*cs[0].cmdSN += 2
	if p, _ := cs[0].recv(); p.(*pdu.NOPIn).ITT != 0x98 {
		t.Fatalf("got %+v", p)
	}
	if p, _ := cs[1].recv(); p.(*pdu.SCSIResponse).Status != 0 || p.(*pdu.SCSIResponse).ITT != 0x99 {
		t.Fatalf("got %+v", p)
	}
	if !bytes.Equal(tg.LUNData(0)[10*BlockSize:][:4096], data) {
		t.Fatal("written data differs")
	}
}
