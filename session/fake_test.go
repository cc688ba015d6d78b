package session

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/pdu"
)

// wait bounds every wait of these tests for something that should happen.
const wait = 5 * time.Second

// quiet is how long a test waits to see that something does not happen.
const quiet = 100 * time.Millisecond

// fakeTarget is a scripted iSCSI target on the far end of a net.Pipe: the
// test reads exactly what the initiator sent and writes exact PDUs back,
// hostile ones included. It speaks just enough login to reach full feature
// phase.
type fakeTarget struct {
	t  testing.TB
	nc net.Conn
	r  *pdu.Reader

	wmu sync.Mutex
	w   *pdu.Writer

	in         chan rxPDU
	readerDone chan struct{}
	started    atomic.Bool // readLoop runs
	closeOnce  sync.Once

	mu       sync.Mutex
	statSN   uint32
	expCmdSN uint32
	maxCmdSN uint32
	window   uint32
	// frozen stops ExpCmdSN and MaxCmdSN from following the commands.
	frozen bool
	// loginReqs and loginKeys are what the initiator sent during login.
	loginReqs []pdu.LoginRequest
	loginKeys []pdu.KV
}

// rxPDU is one PDU the initiator sent.
type rxPDU struct {
	h    pdu.BHS
	p    pdu.PDU
	data []byte
}

func (x rxPDU) op() pdu.Opcode { return x.h.Opcode() }

// fakeLogin says how the fake target answers a login.
type fakeLogin struct {
	// answers override the answer to an operational key we offered.
	answers map[string]string
	// offers are keys the target offers itself in the operational stage.
	offers []pdu.KV
	// tsih is the session handle given; 0 means 0x1234.
	tsih uint16
	// addedTSIH, when set, is the TSIH answered to a connection added to
	// the session (a hostile target changing it); otherwise the request's.
	addedTSIH uint16
	// window is MaxCmdSN-ExpCmdSN+1 after login; 0 means 32.
	window uint32
	// targetMRDSL is the MaxRecvDataSegmentLength the target declares; 0
	// means it declares none.
	targetMRDSL int
}

func newFakeTarget(t testing.TB, nc net.Conn) *fakeTarget {
	return &fakeTarget{t: t, nc: nc, r: pdu.NewReader(nc, pdu.ReaderConfig{From: pdu.FromInitiator}),
		w: pdu.NewWriter(nc), in: make(chan rxPDU, 4096), readerDone: make(chan struct{}), statSN: 0x7000}
}

// readLogin reads one Login Request and its keys.
func (f *fakeTarget) readLogin() (*pdu.LoginRequest, []pdu.KV, error) {
	h, err := f.r.Next()
	if err != nil {
		return nil, nil, err
	}
	if h.Opcode() != pdu.OpLoginRequest {
		return nil, nil, fmt.Errorf("fake: got %s during login", h.Opcode())
	}
	req := new(pdu.LoginRequest)
	if err := req.UnmarshalBHS(h); err != nil {
		return nil, nil, err
	}
	data, err := f.r.Data()
	if err != nil {
		return nil, nil, err
	}
	kvs, err := pdu.ParseText(data, pdu.TextLimits{})
	f.mu.Lock()
	f.loginReqs = append(f.loginReqs, *req)
	f.loginKeys = append(f.loginKeys, kvs...)
	f.mu.Unlock()
	return req, kvs, err
}

func (f *fakeTarget) loginResp(req *pdu.LoginRequest, transit bool, nsg uint8, tsih uint16, kvs []pdu.KV) error {
	f.mu.Lock()
	resp := &pdu.LoginResponse{Transit: transit, CSG: req.CSG, NSG: nsg, ISID: req.ISID, TSIH: tsih, ITT: req.ITT,
		SeqNums: pdu.SeqNums{StatSN: f.statSN, ExpCmdSN: f.expCmdSN, MaxCmdSN: f.maxCmdSN}}
	if !transit {
		resp.NSG = 0
	}
	f.statSN++
	f.mu.Unlock()
	return f.w.WritePDU(resp, pdu.AppendText(nil, kvs...))
}

// serveLogin answers one connection's login with AuthMethod=None, then
// starts reading the initiator's full feature PDUs into f.in.
func (f *fakeTarget) serveLogin(o fakeLogin) error {
	if o.tsih == 0 {
		o.tsih = 0x1234
	}
	if o.window == 0 {
		o.window = 32
	}
	req, kvs, err := f.readLogin()
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.window = o.window
	f.expCmdSN, f.maxCmdSN = req.CmdSN, req.CmdSN+o.window-1
	f.mu.Unlock()
	if req.TSIH != 0 {
		o.tsih = req.TSIH
		if o.addedTSIH != 0 {
			o.tsih = o.addedTSIH
		}
	}
	if req.CSG == pdu.StageSecurity {
		if v, _ := pdu.Lookup(kvs, "AuthMethod"); v != "None" {
			return fmt.Errorf("fake: AuthMethod %q", v)
		}
		if err := f.loginResp(req, true, pdu.StageOperational, req.TSIH, []pdu.KV{{Key: "AuthMethod", Value: "None"}, {Key: "TargetPortalGroupTag", Value: "1"}}); err != nil {
			return err
		}
		if req, kvs, err = f.readLogin(); err != nil {
			return err
		}
	}
	var answers []pdu.KV
	hd, dd := false, false
	for _, p := range kvs {
		v, ok := o.answers[p.Key]
		if !ok {
			switch p.Key {
			case "HeaderDigest", "DataDigest":
				v = "None"
			case "MaxRecvDataSegmentLength", "InitiatorName", "InitiatorAlias", "TargetName", "SessionType":
				continue
			default:
				v = p.Value
			}
		}
		if p.Key == "HeaderDigest" {
			hd = v == "CRC32C"
		}
		if p.Key == "DataDigest" {
			dd = v == "CRC32C"
		}
		answers = append(answers, pdu.KV{Key: p.Key, Value: v})
	}
	if o.targetMRDSL > 0 {
		answers = append(answers, pdu.KV{Key: "MaxRecvDataSegmentLength", Value: strconv.Itoa(o.targetMRDSL)})
	}
	if len(o.offers) > 0 {
		if err := f.loginResp(req, false, 0, o.tsih, append(answers, o.offers...)); err != nil {
			return err
		}
		if req, _, err = f.readLogin(); err != nil {
			return err
		}
		answers = nil
	}
	if err := f.loginResp(req, true, pdu.StageFullFeature, o.tsih, answers); err != nil {
		return err
	}
	f.r.SetConfig(pdu.ReaderConfig{From: pdu.FromInitiator, MaxDataSegmentLength: 1 << 20, HeaderDigest: hd, DataDigest: dd})
	f.w.SetDigests(hd, dd)
	f.started.Store(true)
	go f.readLoop()
	return nil
}

func (f *fakeTarget) readLoop() {
	defer close(f.readerDone)
	defer close(f.in)
	for {
		h, err := f.r.Next()
		if err != nil {
			return
		}
		p, err := pdu.Decode(h)
		if err != nil {
			return
		}
		data, err := f.r.Data()
		if err != nil {
			return
		}
		x := rxPDU{h: *h, p: p, data: append([]byte(nil), data...)}
		if !f.track(x) {
			continue
		}
		f.in <- x
	}
}

// track follows the initiator's CmdSN; it returns false for a PDU the fake
// handles itself (none yet).
func (f *fakeTarget) track(x rxPDU) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.frozen || x.h.Immediate() {
		return true
	}
	var sn uint32
	switch p := x.p.(type) {
	case *pdu.SCSICommand:
		sn = p.CmdSN
	case *pdu.TextRequest:
		sn = p.CmdSN
	case *pdu.LogoutRequest:
		sn = p.CmdSN
	default:
		return true
	}
	if !pdu.SerialLess(sn, f.expCmdSN) {
		f.expCmdSN = sn + 1
		f.maxCmdSN = f.expCmdSN + f.window - 1
	}
	return true
}

// seq returns the sequence numbers for the next PDU; with status it takes a
// StatSN.
func (f *fakeTarget) seq(status bool) pdu.SeqNums {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := pdu.SeqNums{StatSN: f.statSN, ExpCmdSN: f.expCmdSN, MaxCmdSN: f.maxCmdSN}
	if status {
		f.statSN++
	}
	return s
}

// next returns the next PDU from the initiator.
func (f *fakeTarget) next() rxPDU {
	f.t.Helper()
	select {
	case x, ok := <-f.in:
		if !ok {
			f.t.Fatalf("fake target: the initiator closed the connection")
		}
		return x
	case <-time.After(wait):
		f.t.Fatalf("fake target: nothing from the initiator in %v", wait)
	}
	panic("unreachable")
}

// expect returns the next PDU, which must have opcode op; NOP-Outs of the
// keepalive are skipped unless op is OpNOPOut.
func (f *fakeTarget) expect(op pdu.Opcode) rxPDU {
	f.t.Helper()
	for {
		x := f.next()
		if x.op() == op {
			return x
		}
		if x.op() == pdu.OpNOPOut {
			continue
		}
		f.t.Fatalf("fake target: got %s, want %s", x.op(), op)
	}
}

// expectNothing checks that the initiator sends nothing (but keepalive
// NOP-Outs) for a while.
func (f *fakeTarget) expectNothing() {
	f.t.Helper()
	deadline := time.After(quiet)
	for {
		select {
		case x, ok := <-f.in:
			if !ok {
				return
			}
			if x.op() != pdu.OpNOPOut {
				f.t.Fatalf("fake target: got %s, want nothing", x.op())
			}
		case <-deadline:
			return
		}
	}
}

// expectClosed waits for the initiator to close the connection, failing on
// any PDU but NOP-Out before.
func (f *fakeTarget) expectClosed() {
	f.t.Helper()
	timeout := time.After(wait)
	for {
		select {
		case x, ok := <-f.in:
			if !ok {
				return
			}
			if x.op() != pdu.OpNOPOut {
				f.t.Fatalf("fake target: got %s, want the connection closed", x.op())
			}
		case <-timeout:
			f.t.Fatalf("fake target: connection still open after %v", wait)
		}
	}
}

// send writes one PDU; it fails only the write, not the test, since a
// hostile PDU often makes the initiator close the connection under it.
func (f *fakeTarget) send(p pdu.PDU, data []byte) error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	return f.w.WritePDU(p, data)
}

func (f *fakeTarget) mustSend(p pdu.PDU, data []byte) {
	f.t.Helper()
	if err := f.send(p, data); err != nil {
		f.t.Fatalf("fake target: send %s: %v", p.Opcode(), err)
	}
}

// good answers a SCSI command with GOOD status.
func (f *fakeTarget) good(cmd rxPDU) {
	f.t.Helper()
	c := cmd.p.(*pdu.SCSICommand)
	f.mustSend(&pdu.SCSIResponse{ITT: c.ITT, SeqNums: f.seq(true)}, nil)
}

// readData answers a read command with data and status in one Data-In.
func (f *fakeTarget) readData(cmd rxPDU, data []byte) {
	f.t.Helper()
	c := cmd.p.(*pdu.SCSICommand)
	f.mustSend(&pdu.DataIn{Final: true, HasStatus: true, ITT: c.ITT, TTT: 0xffffffff, SeqNums: f.seq(true)}, data)
}

// ping sends a NOP-In that asks for an answer and waits for it: once it
// comes, the initiator's reader has handled everything sent before.
func (f *fakeTarget) ping() {
	f.t.Helper()
	f.mustSend(&pdu.NOPIn{ITT: 0xffffffff, TTT: 0x5157, LUN: 0, SeqNums: f.seq(false)}, nil)
	for {
		x := f.expect(pdu.OpNOPOut)
		if x.p.(*pdu.NOPOut).TTT == 0x5157 {
			return
		}
	}
}

// answerLogout answers a Logout Request with response code resp.
func (f *fakeTarget) answerLogout(x rxPDU, resp uint8) {
	f.t.Helper()
	r := x.p.(*pdu.LogoutRequest)
	f.mustSend(&pdu.LogoutResponse{Response: resp, ITT: r.ITT, SeqNums: f.seq(true)}, nil)
}

func (f *fakeTarget) close() {
	f.closeOnce.Do(func() { f.nc.Close() })
}

// pipeDialer returns a Config.Dial that hands out the initiator's ends of
// pipes whose target ends go to accept, one per connection.
func pipeDialer(accept func(net.Conn)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		ini, tgt := net.Pipe()
		accept(tgt)
		return ini, nil
	}
}

// testConfig is a Config for the fake target with keepalive off.
func testConfig() Config {
	return Config{InitiatorName: "iqn.2026-01.test:initiator", TargetName: "iqn.2026-01.test:target",
		Portal: "fake:3260", NOPInterval: -1}
}

// fakeServer hands a fake target to every connection a session dials, each
// logging in with the same script.
type fakeServer struct {
	t     testing.TB
	login fakeLogin
	// ready gets each connection's fake target once its login is over.
	ready chan fakeReady

	mu    sync.Mutex
	fakes []*fakeTarget
	addrs []string
}

type fakeReady struct {
	f   *fakeTarget
	err error
}

func newFakeServer(t testing.TB, o fakeLogin) *fakeServer {
	srv := &fakeServer{t: t, login: o, ready: make(chan fakeReady, 16)}
	t.Cleanup(srv.close)
	return srv
}

func (srv *fakeServer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	ini, tgt := net.Pipe()
	f := newFakeTarget(srv.t, tgt)
	srv.mu.Lock()
	srv.fakes = append(srv.fakes, f)
	srv.addrs = append(srv.addrs, addr)
	srv.mu.Unlock()
	go func() { srv.ready <- fakeReady{f, f.serveLogin(srv.login)} }()
	return ini, nil
}

// next returns the fake target of the next connection logged in.
func (srv *fakeServer) next() *fakeTarget {
	srv.t.Helper()
	select {
	case r := <-srv.ready:
		if r.err != nil {
			srv.t.Fatalf("fake login: %v", r.err)
		}
		return r.f
	case <-time.After(wait):
		srv.t.Fatalf("fake login: no connection in %v", wait)
	}
	panic("unreachable")
}

func (srv *fakeServer) close() {
	srv.mu.Lock()
	fakes := srv.fakes
	srv.mu.Unlock()
	for _, f := range fakes {
		f.close()
		if f.started.Load() {
			<-f.readerDone
		}
	}
}

// fakeSession logs a session in to a fake target and returns both; the
// test's cleanup closes them and waits for their goroutines.
func fakeSession(t testing.TB, cfg Config, o fakeLogin) (*Session, *fakeTarget) {
	t.Helper()
	s, srv := fakeSessionServer(t, cfg, o)
	return s, srv.fakes[0]
}

// fakeSessionServer is fakeSession for tests that add connections.
func fakeSessionServer(t testing.TB, cfg Config, o fakeLogin) (*Session, *fakeServer) {
	t.Helper()
	srv := newFakeServer(t, o)
	cfg.Dial = srv.dial
	if cfg.Portal == "" {
		cfg.Portal = "fake:3260"
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	s, err := Login(ctx, cfg)
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	srv.next()
	t.Cleanup(func() { s.Close() }) // runs before srv.close
	return s, srv
}

// fakeLoginErr logs in to a fake target whose login script is run, and
// returns Login's error (the session, if any, is closed).
func fakeLoginErr(t testing.TB, cfg Config, script func(f *fakeTarget) error) error {
	t.Helper()
	done := make(chan error, 1)
	var f *fakeTarget
	cfg.Dial = pipeDialer(func(nc net.Conn) {
		f = newFakeTarget(t, nc)
		go func() { done <- script(f) }()
	})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	s, err := Login(ctx, cfg)
	if s != nil {
		s.Close()
	}
	if f != nil {
		f.close()
		<-done
		if f.started.Load() {
			<-f.readerDone
		}
	}
	return err
}

// asProtocolError returns err's *pdu.ProtocolError, failing the test if it
// has none or it names another field.
func asProtocolError(t testing.TB, err error, op pdu.Opcode, field string) *pdu.ProtocolError {
	t.Helper()
	var pe *pdu.ProtocolError
	if !errors.As(err, &pe) {
		t.Fatalf("error %v (%T): want a *pdu.ProtocolError", err, err)
	}
	if pe.Op != op || pe.Field != field {
		t.Fatalf("ProtocolError %s field %s (%v): want %s field %s", pe.Op, pe.Field, pe, op, field)
	}
	return pe
}
