package reliability

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
	"github.com/goiscsi/iscsi/session"
)

// wait bounds every wait for something that should happen.
const wait = 10 * time.Second

// quiet is how long a test watches for something that should not happen.
const quiet = 100 * time.Millisecond

// fakeTarget is a scripted target on the far end of a net.Pipe, for the rows
// that need exact bytes on the wire (bad digests, raw headers): the test
// reads what the initiator sent and writes back what it wants. The approach
// is session/fake_test.go's; this one speaks only the exported API.
type fakeTarget struct {
	t  testing.TB
	nc net.Conn
	r  *pdu.Reader

	wmu sync.Mutex
	w   *pdu.Writer

	in         chan rxPDU
	readerDone chan struct{}
	started    atomic.Bool
	closeOnce  sync.Once

	mu       sync.Mutex
	statSN   uint32
	expCmdSN uint32
	maxCmdSN uint32
	window   uint32
	frozen   bool
	hd, dd   bool
}

// rxPDU is one PDU the initiator sent.
type rxPDU struct {
	h    pdu.BHS
	p    pdu.PDU
	data []byte
}

func (x rxPDU) op() pdu.Opcode { return x.h.Opcode() }

// fakeLogin says how the fake answers a login.
type fakeLogin struct {
	// tsih is given to a new session; 0 means 0x1234.
	tsih uint16
	// addedTSIH, when set, answers a connection added to the session
	// with this TSIH instead of the session's.
	addedTSIH uint16
	// window is MaxCmdSN-ExpCmdSN+1; 0 means 32.
	window uint32
	// digests answers CRC32C to the digests the initiator offers.
	digests bool
	// targetMRDSL is the MaxRecvDataSegmentLength declared; 0 declares none.
	targetMRDSL int
	// security, when set, runs the security stage from its first request
	// (CHAP) and returns the first operational one; otherwise the fake
	// takes AuthMethod=None.
	security func(f *fakeTarget, req *pdu.LoginRequest, kvs []pdu.KV) (*pdu.LoginRequest, []pdu.KV, error)
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
	return req, kvs, err
}

// loginResp answers req; text is the raw data segment.
func (f *fakeTarget) loginResp(req *pdu.LoginRequest, resp pdu.LoginResponse, text []byte) error {
	f.mu.Lock()
	resp.CSG, resp.ITT = req.CSG, req.ITT
	if resp.ISID == ([6]byte{}) {
		resp.ISID = req.ISID
	}
	window := f.window
	if window == 0 {
		window = 32
	}
	resp.SeqNums = pdu.SeqNums{StatSN: f.statSN, ExpCmdSN: req.CmdSN, MaxCmdSN: req.CmdSN + window - 1}
	if !resp.Transit {
		resp.NSG = 0
	}
	f.statSN++
	f.mu.Unlock()
	return f.w.WritePDU(&resp, text)
}

func text(kvs ...string) []byte {
	var b []byte
	for _, kv := range kvs {
		b = append(append(b, kv...), 0)
	}
	return b
}

// serveLogin answers a login with AuthMethod=None and the operational keys,
// then reads the initiator's full feature PDUs into f.in.
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
	tsih := o.tsih
	if req.TSIH != 0 {
		tsih = req.TSIH
		if o.addedTSIH != 0 {
			tsih = o.addedTSIH
		}
	}
	if req.CSG == pdu.StageSecurity && o.security != nil {
		if req, kvs, err = o.security(f, req, kvs); err != nil {
			return err
		}
	} else if req.CSG == pdu.StageSecurity {
		if v, _ := pdu.Lookup(kvs, "AuthMethod"); v != "None" {
			return fmt.Errorf("fake: AuthMethod %q", v)
		}
		if err := f.loginResp(req, pdu.LoginResponse{Transit: true, NSG: pdu.StageOperational, TSIH: req.TSIH},
			text("AuthMethod=None", "TargetPortalGroupTag=1")); err != nil {
			return err
		}
		if req, kvs, err = f.readLogin(); err != nil {
			return err
		}
	}
	var answers []string
	for _, p := range kvs {
		switch p.Key {
		case "HeaderDigest", "DataDigest":
			v := "None"
			if o.digests && p.Value != "None" {
				v = "CRC32C"
				if p.Key == "HeaderDigest" {
					f.hd = true
				} else {
					f.dd = true
				}
			}
			answers = append(answers, p.Key+"="+v)
		case "MaxRecvDataSegmentLength", "InitiatorName", "InitiatorAlias", "TargetName", "SessionType":
		default:
			answers = append(answers, p.Key+"="+p.Value)
		}
	}
	if o.targetMRDSL > 0 {
		answers = append(answers, "MaxRecvDataSegmentLength="+strconv.Itoa(o.targetMRDSL))
	}
	f.mu.Lock()
	f.expCmdSN, f.maxCmdSN = req.CmdSN, req.CmdSN+o.window-1
	f.mu.Unlock()
	if err := f.loginResp(req, pdu.LoginResponse{Transit: true, NSG: pdu.StageFullFeature, TSIH: tsih}, text(answers...)); err != nil {
		return err
	}
	f.r.SetConfig(pdu.ReaderConfig{From: pdu.FromInitiator, MaxDataSegmentLength: 1 << 20, HeaderDigest: f.hd, DataDigest: f.dd})
	f.w.SetDigests(f.hd, f.dd)
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
		f.track(x)
		f.in <- x
	}
}

// track follows the initiator's CmdSN.
func (f *fakeTarget) track(x rxPDU) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.frozen || x.h.Immediate() {
		return
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
		return
	}
	if !pdu.SerialLess(sn, f.expCmdSN) {
		f.expCmdSN = sn + 1
		f.maxCmdSN = f.expCmdSN + f.window - 1
	}
}

// seq returns the sequence numbers of the next PDU; status takes a StatSN.
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

// expect returns the next PDU, which must have opcode op; keepalive
// NOP-Outs are skipped unless op is OpNOPOut.
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

// expectNothing checks that the initiator sends nothing but NOP-Outs for
// a while.
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

// expectClosed waits for the initiator to close the connection.
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

// send writes one PDU with the negotiated digests; it fails only the write,
// not the test, since a hostile PDU often makes the initiator close the
// connection under it.
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

// sendRaw writes bytes exactly as given.
func (f *fakeTarget) sendRaw(b []byte) error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	_, err := f.nc.Write(b)
	return err
}

// wire returns p with data as the bytes the negotiated digests make.
func (f *fakeTarget) wire(p pdu.PDU, data []byte) []byte {
	f.t.Helper()
	var buf bytesBuffer
	w := pdu.NewWriter(&buf)
	w.SetDigests(f.hd, f.dd)
	if err := w.WritePDU(p, data); err != nil {
		f.t.Fatal(err)
	}
	return buf.b
}

type bytesBuffer struct{ b []byte }

func (b *bytesBuffer) Write(p []byte) (int, error) { b.b = append(b.b, p...); return len(p), nil }

// good answers a SCSI command with GOOD status.
func (f *fakeTarget) good(cmd rxPDU) {
	f.t.Helper()
	c := cmd.p.(*pdu.SCSICommand)
	f.mustSend(&pdu.SCSIResponse{ITT: c.ITT, SeqNums: f.seq(true)}, nil)
}

// readData answers a read with data and status in one Data-In.
func (f *fakeTarget) readData(cmd rxPDU, data []byte) {
	f.t.Helper()
	c := cmd.p.(*pdu.SCSICommand)
	f.mustSend(&pdu.DataIn{Final: true, HasStatus: true, ITT: c.ITT, TTT: 0xffffffff, SeqNums: f.seq(true)}, data)
}

// ping sends a NOP-In asking for an answer and waits for it: once it comes,
// the initiator's reader has handled everything sent before.
func (f *fakeTarget) ping() {
	f.t.Helper()
	f.mustSend(&pdu.NOPIn{ITT: 0xffffffff, TTT: 0x5157, SeqNums: f.seq(false)}, nil)
	for {
		x := f.expect(pdu.OpNOPOut)
		if x.p.(*pdu.NOPOut).TTT == 0x5157 {
			return
		}
	}
}

func (f *fakeTarget) close() {
	f.closeOnce.Do(func() { f.nc.Close() })
}

// fakeServer hands a fake target, logging in with one script, to every
// connection a session dials.
type fakeServer struct {
	t     testing.TB
	login fakeLogin
	ready chan fakeReady

	mu    sync.Mutex
	fakes []*fakeTarget
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
	o := srv.login
	srv.mu.Unlock()
	go func() { srv.ready <- fakeReady{f, f.serveLogin(o)} }()
	return ini, nil
}

// next returns the fake target of the next connection that logged in.
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
	// Drain logins that ended after the test stopped looking.
	for {
		select {
		case <-srv.ready:
		default:
			return
		}
	}
}

// testConfig is a session Config for the fake target, keepalive off.
func testConfig() session.Config {
	return session.Config{InitiatorName: "iqn.2026-11.org.goiscsi:reliability", TargetName: "iqn.2026-11.org.goiscsi:fake",
		Portal: "fake:3260", NOPInterval: -1, LoginTimeout: wait}
}

// fakeSession logs a session in to a fake target; the test's cleanup closes
// both and waits for their goroutines.
func fakeSession(t testing.TB, cfg session.Config, o fakeLogin) (*session.Session, *fakeTarget) {
	t.Helper()
	s, srv := fakeSessionServer(t, cfg, o)
	return s, srv.fakes[0]
}

func fakeSessionServer(t testing.TB, cfg session.Config, o fakeLogin) (*session.Session, *fakeServer) {
	t.Helper()
	srv := newFakeServer(t, o)
	cfg.Dial = srv.dial
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	s, err := session.Login(ctx, cfg)
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	srv.next()
	t.Cleanup(func() { s.Close() }) // before srv.close
	return s, srv
}

// fakeLoginErr logs in to fake targets that run script, one per connection
// dialed, and returns Login's error; a session, if any, is closed.
func fakeLoginErr(t testing.TB, cfg session.Config, script func(f *fakeTarget) error) error {
	t.Helper()
	var mu sync.Mutex
	var fakes []*fakeTarget
	done := make(chan error, 16)
	cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		ini, tgt := net.Pipe()
		f := newFakeTarget(t, tgt)
		mu.Lock()
		fakes = append(fakes, f)
		mu.Unlock()
		go func() { done <- script(f) }()
		return ini, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	s, err := session.Login(ctx, cfg)
	if s != nil {
		s.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	for _, f := range fakes {
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

type execResult struct {
	res *session.Result
	err error
}

// goExecute runs Execute in a goroutine, for the target to answer.
func goExecute(ctx context.Context, s *session.Session, cmd *session.Command) <-chan execResult {
	ch := make(chan execResult, 1)
	go func() {
		res, err := s.Execute(ctx, cmd)
		ch <- execResult{res, err}
	}()
	return ch
}

func waitExec(t testing.TB, ch <-chan execResult) execResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(wait):
		t.Fatalf("Execute did not return in %v", wait)
	}
	panic("unreachable")
}

// waitEnded waits for the session to have no connection left.
func waitEnded(t testing.TB, s *session.Session) {
	t.Helper()
	select {
	case <-s.Ended():
	case <-time.After(wait):
		t.Fatalf("session did not end in %v", wait)
	}
}

func rw16(op byte, lba uint64, n int) []byte {
	cdb := make([]byte, 16)
	cdb[0] = op
	for i := 0; i < 8; i++ {
		cdb[2+i] = byte(lba >> (56 - 8*i))
	}
	blocks := uint32(n / 512)
	cdb[10], cdb[11], cdb[12], cdb[13] = byte(blocks>>24), byte(blocks>>16), byte(blocks>>8), byte(blocks)
	return cdb
}

func readCmd(n int) *session.Command {
	return &session.Command{LUN: 1, CDB: rw16(0x88, 0, n), Read: make([]byte, n)}
}

func writeCmd(data []byte) *session.Command {
	return &session.Command{LUN: 1, CDB: rw16(0x8a, 0, len(data)), Write: data}
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7) + byte(i>>9)
	}
	return b
}
