package iscsitest

import (
	"bytes"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/pdu"
)

var initiatorName = pdu.KV{Key: "InitiatorName", Value: "iqn.2026-11.org.goiscsi:ini"}
var targetName = pdu.KV{Key: "TargetName", Value: DefaultName}

// loginFails sends one Login Request and expects the login to fail with st
// and the connection to close.
func loginFails(t *testing.T, i *ini, st pdu.LoginStatus, csg, nsg uint8, transit bool, kvs ...pdu.KV) {
	t.Helper()
	resp, _ := i.loginReq(csg, nsg, transit, kvs...)
	if resp.Status() != st {
		t.Fatalf("login status %s, want %s", resp.Status(), st)
	}
	i.expectClosed(false)
}

func TestLoginErrors(t *testing.T) {
	tg := newTarget(t, Config{})
	none := pdu.KV{Key: "AuthMethod", Value: "None"}
	t.Run("target not found", func(t *testing.T) {
		loginFails(t, dial(t, tg), pdu.LoginTargetNotFound, 0, 1, true, initiatorName,
			pdu.KV{Key: "TargetName", Value: "iqn.2026-11.org.goiscsi:nope"}, none)
	})
	t.Run("no InitiatorName", func(t *testing.T) {
		loginFails(t, dial(t, tg), pdu.LoginMissingParameter, 0, 1, true, targetName, none)
	})
	t.Run("no TargetName", func(t *testing.T) {
		loginFails(t, dial(t, tg), pdu.LoginMissingParameter, 0, 1, true, initiatorName, none)
	})
	t.Run("malformed InitiatorName", func(t *testing.T) {
		loginFails(t, dial(t, tg), pdu.LoginInitiatorError, 0, 1, true,
			pdu.KV{Key: "InitiatorName", Value: "initiator"}, targetName, none)
	})
	t.Run("session type", func(t *testing.T) {
		loginFails(t, dial(t, tg), pdu.LoginSessionTypeNotSupp, 0, 1, true, initiatorName, targetName,
			pdu.KV{Key: "SessionType", Value: "Bulk"})
	})
	t.Run("key repeated", func(t *testing.T) {
		i := dial(t, tg)
		mb := pdu.KV{Key: "MaxBurstLength", Value: "65536"}
		if resp, _ := i.loginReq(0, 1, false, initiatorName, targetName, none, mb); resp.Status() != 0 {
			t.Fatalf("first request: %s", resp.Status())
		}
		loginFails(t, i, pdu.LoginInitiatorError, 0, 1, true, mb)
	})
	t.Run("target key", func(t *testing.T) {
		loginFails(t, dial(t, tg), pdu.LoginInitiatorError, 0, 1, true, initiatorName, targetName, none,
			pdu.KV{Key: "TargetAddress", Value: "10.0.0.1"})
	})
	t.Run("bad NSG", func(t *testing.T) {
		loginFails(t, dial(t, tg), pdu.LoginInitiatorError, 1, 0, true, initiatorName, targetName)
	})
	t.Run("text without NUL", func(t *testing.T) {
		i := dial(t, tg)
		i.send(&pdu.LoginRequest{CSG: 0, NSG: 1, Transit: true, ISID: i.isid, ITT: i.itt}, []byte("InitiatorName=iqn.x"))
		p, _ := i.recv()
		if p.(*pdu.LoginResponse).Status() != pdu.LoginInitiatorError {
			t.Fatalf("got %+v", p)
		}
	})
	t.Run("version", func(t *testing.T) {
		i := dial(t, tg)
		i.send(&pdu.LoginRequest{CSG: 1, NSG: 3, Transit: true, VersionMax: 2, VersionMin: 1, ISID: i.isid, ITT: i.itt},
			pdu.AppendText(nil, initiatorName, targetName))
		if p, _ := i.recv(); p.(*pdu.LoginResponse).Status() != pdu.LoginUnsupportedVersion {
			t.Fatalf("got %+v", p)
		}
	})
	t.Run("no I bit", func(t *testing.T) {
		// tgtd refuses it; an initiator must set I on every Login Request.
		i := dial(t, tg)
		var h pdu.BHS
		(&pdu.LoginRequest{CSG: 1, NSG: 3, Transit: true, ISID: i.isid, ITT: i.itt}).MarshalBHS(&h)
		h[0] &^= 0x40
		data := pdu.AppendText(nil, initiatorName, targetName)
		h.SetLengths(0, len(data))
		i.sendRaw(&h, data)
		if p, _ := i.recv(); p.(*pdu.LoginResponse).Status() != pdu.LoginInitiatorError {
			t.Fatalf("got %+v", p)
		}
		i.expectClosed(false)
	})
	t.Run("not a login", func(t *testing.T) {
		i := dial(t, tg)
		i.send(&pdu.NOPOut{Immediate: true, ITT: 5, TTT: 0xffffffff}, nil)
		if p, _ := i.recv(); p.(*pdu.LoginResponse).Status() != pdu.LoginInvalidDuringLogin {
			t.Fatalf("got %+v", p)
		}
		i.expectClosed(false)
	})
	if st := tg.Stats(); st.Logins != 0 || st.LoginFailures < 11 {
		t.Fatalf("Stats: %d logins, %d failures", st.Logins, st.LoginFailures)
	}
}

func TestLoginTimeout(t *testing.T) {
	tg := newTarget(t, Config{LoginTimeout: 100 * time.Millisecond})
	i := dial(t, tg)
	i.expectClosed(false)
}

// TestLoginContinue sends the first request's text in two PDUs with the C
// bit, as an initiator with long text must.
func TestLoginContinue(t *testing.T) {
	tg := newTarget(t, Config{})
	i := dial(t, tg)
	text := pdu.AppendText(nil, initiatorName, targetName, pdu.KV{Key: "AuthMethod", Value: "None"})
	i.send(&pdu.LoginRequest{Continue: true, CSG: 0, NSG: 1, ISID: i.isid, ITT: i.itt}, text[:10])
	p, data := i.recv()
	if r := p.(*pdu.LoginResponse); r.Status() != 0 || r.Transit || len(data) != 0 {
		t.Fatalf("response to a partial request: %+v %q", r, data)
	}
	i.send(&pdu.LoginRequest{Transit: true, CSG: 0, NSG: 1, ISID: i.isid, ITT: i.itt}, text[10:])
	p, data = i.recv()
	if r := p.(*pdu.LoginResponse); r.Status() != 0 || !r.Transit || !bytes.Contains(data, []byte("AuthMethod=None")) {
		t.Fatalf("response to the whole request: %+v %q", r, data)
	}
}

func TestNegotiation(t *testing.T) {
	tg := newTarget(t, Config{ImmediateData: true, MaxConnections: 2})
	i := dial(t, tg)
	i.login(loginOpts{op: []pdu.KV{
		{Key: "HeaderDigest", Value: "CRC32C,None"}, {Key: "DataDigest", Value: "None,CRC32C"},
		{Key: "MaxConnections", Value: "8"}, {Key: "InitialR2T", Value: "No"}, {Key: "ImmediateData", Value: "Yes"},
		{Key: "MaxBurstLength", Value: "1048576"}, {Key: "FirstBurstLength", Value: "1000"},
		{Key: "DefaultTime2Wait", Value: "0"}, {Key: "DefaultTime2Retain", Value: "60"},
		{Key: "MaxOutstandingR2T", Value: "8"}, {Key: "DataPDUInOrder", Value: "No"},
		{Key: "ErrorRecoveryLevel", Value: "2"}, {Key: "IFMarker", Value: "No"}, {Key: "OFMarkInt", Value: "1~65535"},
		{Key: "X-org.example.key", Value: "1"}, {Key: "TaskReporting", Value: "FastAbort,RFC3720"},
		{Key: "iSCSIProtocolLevel", Value: "2"}, {Key: "MaxRecvDataSegmentLength", Value: "16384"},
	}})
	want := map[string]string{
		"HeaderDigest": "CRC32C", "DataDigest": "None", "MaxConnections": "2", "InitialR2T": "No",
		"ImmediateData": "Yes", "MaxBurstLength": "262144", "FirstBurstLength": "1000", "DefaultTime2Wait": "2",
		"DefaultTime2Retain": "20", "MaxOutstandingR2T": "1", "DataPDUInOrder": "Yes", "ErrorRecoveryLevel": "0",
		"IFMarker": "Reject", "OFMarkInt": "Reject", "X-org.example.key": "NotUnderstood", "TaskReporting": "RFC3720",
		"iSCSIProtocolLevel": "1", "MaxRecvDataSegmentLength": "8192", "TargetPortalGroupTag": "1",
	}
	for k, v := range want {
		if i.negotiated[k] != v {
			t.Errorf("%s=%q, want %q", k, i.negotiated[k], v)
		}
	}
	s := sessionByTSIH(tg, i.tsih)
	wantP := Params{MaxConnections: 2, InitialR2T: false, ImmediateData: true, MaxBurstLength: 262144,
		FirstBurstLength: 1000, DefaultTime2Wait: 2, DefaultTime2Retain: 20, MaxOutstandingR2T: 1,
		DataPDUInOrder: true, DataSequenceInOrder: true}
	if s.Params != wantP || !s.Conns[0].HeaderDigest || s.Conns[0].DataDigest || s.Conns[0].MaxRecvDataSegmentLength != 16384 {
		t.Fatalf("target's view: %+v", s)
	}
	data := pattern(20000/BlockSize*BlockSize, 1)
	i.write(0, 0, data)
	if !bytes.Equal(i.read(0, 0, len(data)/BlockSize).data, data) {
		t.Fatal("read differs")
	}
}

// TestTargetOffers checks that the target proposes the keys whose values
// it needs when the initiator does not, and holds the initiator to them.
func TestTargetOffers(t *testing.T) {
	cfg := Config{MaxBurstLength: 65536, FirstBurstLength: 4096, HeaderDigests: []string{"CRC32C"},
		DataDigests: []string{"CRC32C"}}
	tg := newTarget(t, cfg)
	i := dial(t, tg)
	i.login(loginOpts{noDigests: true})
	s := sessionByTSIH(tg, i.tsih)
	if s.Params.ImmediateData || s.Params.MaxBurstLength != 65536 || s.Params.FirstBurstLength != 4096 ||
		!s.Conns[0].HeaderDigest || !s.Conns[0].DataDigest {
		t.Fatalf("target's view: %+v", s)
	}
	data := pattern(200<<10, 2)
	if w := i.write(0, 0, data); w.r2ts < 3 {
		t.Fatalf("%d R2Ts for 200 KiB with MaxBurstLength 64 KiB", w.r2ts)
	}
	if !bytes.Equal(i.read(0, 0, len(data)/BlockSize).data, data) {
		t.Fatal("read differs")
	}

	// An answer above the target's offer breaks the minimum rule.
	i = dial(t, tg)
	i.isid[5]++
	if r, _ := i.loginReq(0, 1, true, initiatorName, targetName, pdu.KV{Key: "AuthMethod", Value: "None"}); r.Status() != 0 {
		t.Fatal(r.Status())
	}
	r, got := i.loginReq(1, 3, true, pdu.KV{Key: "HeaderDigest", Value: "CRC32C"}, pdu.KV{Key: "DataDigest", Value: "CRC32C"})
	if r.Transit || r.Status() != 0 || i.negotiated["MaxBurstLength"] != "65536" {
		t.Fatalf("got %+v %v", r, got)
	}
	loginFails(t, i, pdu.LoginInitiatorError, 1, 3, true, pdu.KV{Key: "MaxBurstLength", Value: "131072"},
		pdu.KV{Key: "FirstBurstLength", Value: "4096"}, pdu.KV{Key: "ImmediateData", Value: "No"})

	// An initiator that cannot do the digests the target requires.
	i = dial(t, tg)
	i.isid[5] += 2
	if st := i.tryLogin(loginOpts{}); st != pdu.LoginInitiatorError || i.negotiated["HeaderDigest"] != "Reject" {
		t.Fatalf("login with HeaderDigest=None: %s, answered %q", st, i.negotiated["HeaderDigest"])
	}
}

func TestDiscovery(t *testing.T) {
	tg := newTarget(t, Config{})
	i := dial(t, tg)
	i.login(loginOpts{discovery: true, op: []pdu.KV{{Key: "MaxBurstLength", Value: "4096"}}})
	if i.negotiated["MaxBurstLength"] != "Irrelevant" || i.negotiated["TargetPortalGroupTag"] != "" {
		t.Fatalf("discovery login answered %v", i.negotiated)
	}
	kvs := i.text(pdu.KV{Key: "SendTargets", Value: "All"})
	want := []pdu.KV{{Key: "TargetName", Value: DefaultName}, {Key: "TargetAddress", Value: tg.Addr() + ",1"}}
	if len(kvs) != 2 || kvs[0] != want[0] || kvs[1] != want[1] {
		t.Fatalf("SendTargets=All: %v", kvs)
	}
	// No SCSI in a discovery session.
	res := i.sendExpect(&pdu.SCSICommand{Final: true, ITT: 77, CmdSN: *i.cmdSN}, nil)
	*i.cmdSN++
	if rj, ok := res.(*pdu.Reject); !ok || rj.Reason != pdu.RejectProtocolError {
		t.Fatalf("SCSI command in discovery: %+v", res)
	}
	if lr := i.logoutResp(pdu.LogoutCloseSession, 0); lr.Response != 0 {
		t.Fatalf("logout %+v", lr)
	}
	if s := sessionByTSIH(tg, i.tsih); !s.Discovery || !s.LoggedOut {
		t.Fatalf("discovery session: %+v", s)
	}

	// In a normal session SendTargets reports the session's target only.
	n := dial(t, tg)
	n.login(loginOpts{})
	if kvs := n.text(pdu.KV{Key: "SendTargets", Value: ""}); len(kvs) != 2 || kvs[0] != want[0] {
		t.Fatalf("SendTargets=: %v", kvs)
	}
	if kvs := n.text(pdu.KV{Key: "SendTargets", Value: "All"}); len(kvs) != 1 || kvs[0].Value != "Reject" {
		t.Fatalf("SendTargets=All in a normal session: %v", kvs)
	}
}

// text runs a Text Request exchange and returns the answer.
func (i *ini) text(kvs ...pdu.KV) []pdu.KV {
	i.t.Helper()
	itt := i.nextITT()
	p := i.sendExpect(&pdu.TextRequest{Final: true, ITT: itt, TTT: 0xffffffff, CmdSN: *i.cmdSN, ExpStatSN: i.expStatSN},
		pdu.AppendText(nil, kvs...))
	*i.cmdSN++
	tr, ok := p.(*pdu.TextResponse)
	if !ok || tr.ITT != itt || !tr.Final || tr.TTT != 0xffffffff {
		i.t.Fatalf("got %s %+v, want a final Text Response", p.Opcode(), p)
	}
	got, err := pdu.ParseText(i.lastData, pdu.TextLimits{AllowDuplicates: true})
	if err != nil {
		i.t.Fatal(err)
	}
	return got
}

// sendExpect sends a PDU and returns the next one received; its data is in
// i.lastData.
func (i *ini) sendExpect(p pdu.PDU, data []byte) pdu.PDU {
	i.t.Helper()
	i.send(p, data)
	r, d := i.recv()
	i.lastData = d
	return r
}
