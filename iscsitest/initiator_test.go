package iscsitest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/goiscsi/iscsi/pdu"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// wait bounds every read of the test initiator.
const wait = 5 * time.Second

// ini is a minimal initiator written against the wire codec, to drive the
// target PDU by PDU and check its sequence numbers.
type ini struct {
	t         testing.TB
	nc        net.Conn
	r         *pdu.Reader
	w         *pdu.Writer
	isid      [6]byte
	tsih      uint16
	cid       uint16
	itt       uint32
	cmdSN     *uint32 // shared by the connections of a session
	expStatSN uint32
	statSeen  bool
	maxCmdSN  uint32
	// negotiated holds the keys the target answered or declared.
	negotiated map[string]string
	maxRecv    int // our MaxRecvDataSegmentLength
	lastData   []byte
}

func newIni(t testing.TB, nc net.Conn) *ini {
	t.Helper()
	sn := uint32(100)
	i := &ini{t: t, nc: nc, isid: [6]byte{0x80, 0x12, 0x34, 0x56, 0x00, 0x01}, cmdSN: &sn, itt: 1,
		negotiated: map[string]string{}, maxRecv: 65536}
	i.r = pdu.NewReader(bufio.NewReader(nc), pdu.ReaderConfig{From: pdu.FromTarget})
	i.w = pdu.NewWriter(nc)
	t.Cleanup(func() { nc.Close() })
	return i
}

func dial(t testing.TB, tg *Target) *ini {
	t.Helper()
	nc, err := net.DialTimeout("tcp", tg.Addr(), wait)
	if err != nil {
		t.Fatal(err)
	}
	return newIni(t, nc)
}

func (i *ini) nextITT() uint32 { i.itt++; return i.itt }

// join makes i a new connection of o's session, with CID cid.
func (i *ini) join(o *ini, cid uint16) {
	i.isid, i.tsih, i.cid, i.cmdSN = o.isid, o.tsih, cid, o.cmdSN
	i.itt = o.itt + 1000*uint32(cid)
}

// send writes one PDU.
func (i *ini) send(p pdu.PDU, data []byte) {
	i.t.Helper()
	i.nc.SetWriteDeadline(time.Now().Add(wait))
	if err := i.w.WritePDU(p, data); err != nil {
		i.t.Fatalf("send %s: %v", p.Opcode(), err)
	}
}

// sendRaw writes a header as given.
func (i *ini) sendRaw(h *pdu.BHS, data []byte) {
	i.t.Helper()
	i.nc.SetWriteDeadline(time.Now().Add(wait))
	i.w.AppendRaw(h, nil, data)
	if err := i.w.Flush(); err != nil {
		i.t.Fatalf("send raw: %v", err)
	}
}

// tryRecv reads one PDU within d and checks the target's StatSN and window.
func (i *ini) tryRecv(d time.Duration) (pdu.PDU, []byte, error) {
	i.nc.SetReadDeadline(time.Now().Add(d))
	h, err := i.r.Next()
	if err != nil {
		return nil, nil, err
	}
	data, err := i.r.Data()
	if err != nil {
		return nil, nil, err
	}
	data = slices.Clone(data)
	p, err := pdu.Decode(h)
	if err != nil {
		return nil, nil, err
	}
	if err := i.checkSeq(p); err != nil {
		i.t.Errorf("%s: %v", p.Opcode(), err)
	}
	return p, data, nil
}

// recv reads one PDU or fails the test.
func (i *ini) recv() (pdu.PDU, []byte) {
	i.t.Helper()
	p, data, err := i.tryRecv(wait)
	if err != nil {
		i.t.Fatalf("recv: %v", err)
	}
	return p, data
}

// checkSeq checks that StatSN goes up by one per status-bearing PDU and that
// the window never shrinks below what was sent.
func (i *ini) checkSeq(p pdu.PDU) error {
	if lr, ok := p.(*pdu.LoginResponse); ok && lr.StatusClass != 0 {
		return nil
	}
	sn, status := pdu.TargetSeq(p)
	if sn == nil {
		return nil
	}
	if !pdu.SerialLessEq(sn.ExpCmdSN-1, sn.MaxCmdSN) {
		return fmt.Errorf("MaxCmdSN %d < ExpCmdSN %d - 1", sn.MaxCmdSN, sn.ExpCmdSN)
	}
	i.maxCmdSN = sn.MaxCmdSN
	if _, ok := p.(*pdu.DataIn); ok && !status {
		return nil
	}
	if i.statSeen && sn.StatSN != i.expStatSN {
		return fmt.Errorf("StatSN %d, want %d", sn.StatSN, i.expStatSN)
	}
	i.statSeen = true
	i.expStatSN = sn.StatSN
	if status {
		i.expStatSN++
	}
	return nil
}

// expectClosed waits for the target to close the connection: EOF, or a
// reset when reset is true.
func (i *ini) expectClosed(reset bool) {
	i.t.Helper()
	for {
		p, _, err := i.tryRecv(wait)
		if err == nil {
			i.t.Fatalf("got %s, want the connection closed", p.Opcode())
		}
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			i.t.Fatalf("connection still open: %v", err)
		case reset && !isReset(err):
			i.t.Fatalf("got %v, want a connection reset", err)
		case !reset && isReset(err):
			i.t.Fatalf("got a reset, want FIN: %v", err)
		}
		return
	}
}

// expectSilence checks that nothing arrives for d.
func (i *ini) expectSilence(d time.Duration) {
	i.t.Helper()
	p, _, err := i.tryRecv(d)
	if err == nil {
		i.t.Fatalf("got %s, want nothing", p.Opcode())
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		i.t.Fatalf("got %v, want a timeout", err)
	}
	// The Reader fails for good after an error; start a fresh one, the
	// stream is still in step since nothing was read.
	i.r = pdu.NewReader(bufio.NewReader(i.nc), i.r.Config())
}

// loginReq sends one Login Request and returns the response.
func (i *ini) loginReq(csg, nsg uint8, transit bool, kvs ...pdu.KV) (*pdu.LoginResponse, []pdu.KV) {
	i.t.Helper()
	i.send(&pdu.LoginRequest{Transit: transit, CSG: csg, NSG: nsg, ISID: i.isid, TSIH: i.tsih, ITT: i.itt,
		CID: i.cid, CmdSN: *i.cmdSN, ExpStatSN: i.expStatSN}, pdu.AppendText(nil, kvs...))
	p, data := i.recv()
	resp, ok := p.(*pdu.LoginResponse)
	if !ok {
		i.t.Fatalf("got %s, want a Login Response", p.Opcode())
	}
	got, err := pdu.ParseText(data, pdu.TextLimits{})
	if err != nil {
		i.t.Fatalf("login response text: %v", err)
	}
	for _, kv := range got {
		i.negotiated[kv.Key] = kv.Value
	}
	if resp.ITT != i.itt || resp.ISID != i.isid {
		i.t.Errorf("login response ITT %#x ISID %x, want %#x %x", resp.ITT, resp.ISID, i.itt, i.isid)
	}
	return resp, got
}

// loginOpts says how ini logs in.
type loginOpts struct {
	name      string   // TargetName; default DefaultName
	discovery bool     // SessionType=Discovery
	op        []pdu.KV // operational keys, in addition to the defaults
	chap      *CHAP    // log in with CHAP as this user
	alg       string   // CHAP_A list; default "5"
	mutualC   []byte   // challenge of mutual CHAP; default random-ish
	reflect   bool     // send the target's own challenge back in mutual CHAP
	noDigests bool     // leave HeaderDigest and DataDigest to the target
}

// login logs in to full feature phase and switches to the negotiated digests.
func (i *ini) login(o loginOpts) {
	i.t.Helper()
	if st := i.tryLogin(o); st != pdu.LoginSuccess {
		i.t.Fatalf("login: %s", st)
	}
}

// tryLogin logs in and returns the status of the login.
func (i *ini) tryLogin(o loginOpts) pdu.LoginStatus {
	i.t.Helper()
	first := []pdu.KV{{Key: "InitiatorName", Value: "iqn.2026-11.org.goiscsi:ini"}}
	if o.discovery {
		first = append(first, pdu.KV{Key: "SessionType", Value: "Discovery"})
	} else {
		name := o.name
		if name == "" {
			name = DefaultName
		}
		first = append(first, pdu.KV{Key: "TargetName", Value: name}, pdu.KV{Key: "SessionType", Value: "Normal"})
	}
	if o.chap == nil {
		first = append(first, pdu.KV{Key: "AuthMethod", Value: "None"})
		resp, _ := i.loginReq(0, 1, true, first...)
		if resp.Status() != 0 {
			return resp.Status()
		}
		if !resp.Transit || resp.NSG != 1 {
			i.t.Fatalf("security stage: T=%v NSG=%d", resp.Transit, resp.NSG)
		}
	} else if st := i.chapLogin(o, first); st != 0 {
		return st
	}
	op := []pdu.KV{{Key: "MaxRecvDataSegmentLength", Value: strconv.Itoa(i.maxRecv)}}
	if !o.noDigests {
		op = append(op, pdu.KV{Key: "HeaderDigest", Value: "None"}, pdu.KV{Key: "DataDigest", Value: "None"})
	}
	if !o.discovery {
		op = append(op, pdu.KV{Key: "DefaultTime2Wait", Value: "2"}, pdu.KV{Key: "DefaultTime2Retain", Value: "20"},
			pdu.KV{Key: "ErrorRecoveryLevel", Value: "0"})
	}
	op = merge(op, o.op)
	for range 4 {
		resp, got := i.loginReq(1, 3, true, op...)
		if resp.Status() != 0 {
			return resp.Status()
		}
		if resp.Transit {
			if resp.NSG != 3 {
				i.t.Fatalf("operational stage: NSG=%d", resp.NSG)
			}
			i.tsih = resp.TSIH
			i.ffp()
			return 0
		}
		// The target offered keys of its own: accept its values.
		sent := op
		op = nil
		for _, kv := range got {
			_, known := pdu.LookupKey(kv.Key)
			if known && !slices.ContainsFunc(sent, func(s pdu.KV) bool { return s.Key == kv.Key }) &&
				kv.Key != "MaxRecvDataSegmentLength" && kv.Key != "TargetPortalGroupTag" {
				op = append(op, kv)
			}
		}
	}
	i.t.Fatal("login did not end")
	return 0
}

func merge(base, over []pdu.KV) []pdu.KV {
	out := slices.Clone(base)
	for _, kv := range over {
		if j := slices.IndexFunc(out, func(b pdu.KV) bool { return b.Key == kv.Key }); j >= 0 {
			out[j] = kv
		} else {
			out = append(out, kv)
		}
	}
	return out
}

// ffp switches the codec to what was negotiated.
func (i *ini) ffp() {
	hd, dd := i.negotiated["HeaderDigest"] == "CRC32C", i.negotiated["DataDigest"] == "CRC32C"
	i.w.SetDigests(hd, dd)
	i.r.SetConfig(pdu.ReaderConfig{From: pdu.FromTarget, MaxDataSegmentLength: i.maxRecv, HeaderDigest: hd, DataDigest: dd})
}

// param returns a negotiated value as a number, or def.
func (i *ini) param(key string, def int) int {
	if v, ok := i.negotiated[key]; ok {
		n, err := strconv.Atoi(v)
		if err == nil {
			return n
		}
	}
	return def
}

func (i *ini) paramBool(key string, def bool) bool {
	if v, ok := i.negotiated[key]; ok {
		return v == "Yes"
	}
	return def
}

// nop sends a NOP-Out ping and waits for its NOP-In.
func (i *ini) nop(data []byte) []byte {
	i.t.Helper()
	itt := i.nextITT()
	i.send(&pdu.NOPOut{Immediate: true, ITT: itt, TTT: 0xffffffff, CmdSN: *i.cmdSN, ExpStatSN: i.expStatSN}, data)
	p, got := i.recv()
	in, ok := p.(*pdu.NOPIn)
	if !ok || in.ITT != itt {
		i.t.Fatalf("got %s (%+v), want NOP-In ITT %#x", p.Opcode(), p, itt)
	}
	return got
}

// logout sends a Logout Request and returns the first PDU answering it.
func (i *ini) logout(reason pdu.LogoutReason, cid uint16) pdu.PDU {
	i.t.Helper()
	i.send(&pdu.LogoutRequest{Immediate: true, ReasonCode: reason, ITT: i.nextITT(), CID: cid, CmdSN: *i.cmdSN,
		ExpStatSN: i.expStatSN}, nil)
	p, _ := i.recv()
	return p
}

// logoutResp sends a Logout Request and expects a Logout Response.
func (i *ini) logoutResp(reason pdu.LogoutReason, cid uint16) *pdu.LogoutResponse {
	i.t.Helper()
	p := i.logout(reason, cid)
	lr, ok := p.(*pdu.LogoutResponse)
	if !ok {
		i.t.Fatalf("got %s, want a Logout Response", p.Opcode())
	}
	if lr.ITT != i.itt {
		i.t.Errorf("logout response ITT %#x, want %#x", lr.ITT, i.itt)
	}
	return lr
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

func dialErr(tg *Target) (net.Conn, error) {
	nc, err := net.DialTimeout("tcp", tg.Addr(), wait)
	if err == nil {
		nc.Close()
	}
	return nc, err
}
