package faketarget

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/goiscsi/iscsi/pdu"
)

// Login says how ServeLogin answers a login.
type Login struct {
	// Answers override the answer to an operational key the initiator
	// offered.
	Answers map[string]string
	// Offers are keys the target offers itself in the operational stage,
	// in a response of their own before the last.
	Offers []pdu.KV
	// TSIH is the session handle given to a new session; 0 means 0x1234.
	TSIH uint16
	// AddedTSIH, when set, is the TSIH answered to a connection added to
	// the session (a hostile target changing it); otherwise the request's.
	AddedTSIH uint16
	// Window is MaxCmdSN-ExpCmdSN+1 after login; 0 means 32.
	Window uint32
	// Digests answers CRC32C to the digests the initiator offers.
	Digests bool
	// TargetMRDSL is the MaxRecvDataSegmentLength the target declares; 0
	// means it declares none.
	TargetMRDSL int
	// Security, when set, runs the security stage from its first request
	// (CHAP, say) and returns the first operational one; otherwise the
	// target takes AuthMethod=None.
	Security func(f *Target, req *pdu.LoginRequest, kvs []pdu.KV) (*pdu.LoginRequest, []pdu.KV, error)
	// NoReader makes ServeLogin return at full feature phase without
	// starting its reader: the caller reads the connection itself, byte
	// by byte (the fuzz target does), with the digests Digests reports,
	// its sequence numbers going on from Seq.
	NoReader bool
}

// Digests reports the header and data digests the login negotiated.
func (f *Target) Digests() (header, data bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hd, f.dd
}

// ReadLogin reads one Login Request and its keys, which LoginRequests and
// LoginKeys then report.
func (f *Target) ReadLogin() (*pdu.LoginRequest, []pdu.KV, error) {
	h, err := f.r.Next()
	if err != nil {
		return nil, nil, err
	}
	if h.Opcode() != pdu.OpLoginRequest {
		return nil, nil, fmt.Errorf("fake target: got %s during login", h.Opcode())
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

// LoginRequests returns the Login Requests read so far.
func (f *Target) LoginRequests() []pdu.LoginRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]pdu.LoginRequest(nil), f.loginReqs...)
}

// LoginKeys returns the keys of the Login Requests read so far.
func (f *Target) LoginKeys() []pdu.KV {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]pdu.KV(nil), f.loginKeys...)
}

// AnswerLogin answers req with resp, text as its data segment. CSG, ITT and
// the sequence numbers come from req, and so does ISID unless resp sets
// one; NSG is cleared unless resp transits.
func (f *Target) AnswerLogin(req *pdu.LoginRequest, resp pdu.LoginResponse, text []byte) error {
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
	return f.Send(&resp, text)
}

// Text returns key=value strings as a data segment, each followed by a NUL;
// unlike pdu.AppendText it keeps malformed ones as they are.
func Text(kvs ...string) []byte {
	var b []byte
	for _, kv := range kvs {
		b = append(append(b, kv...), 0)
	}
	return b
}

// ServeLogin answers one connection's login as o says, then starts reading
// the initiator's full feature PDUs for Next, Expect and In.
func (f *Target) ServeLogin(o Login) error {
	if o.TSIH == 0 {
		o.TSIH = 0x1234
	}
	if o.Window == 0 {
		o.Window = 32
	}
	req, kvs, err := f.ReadLogin()
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.window = o.Window
	f.mu.Unlock()
	tsih := o.TSIH
	if req.TSIH != 0 {
		tsih = req.TSIH
		if o.AddedTSIH != 0 {
			tsih = o.AddedTSIH
		}
	}
	if req.CSG == pdu.StageSecurity && o.Security != nil {
		if req, kvs, err = o.Security(f, req, kvs); err != nil {
			return err
		}
	} else if req.CSG == pdu.StageSecurity {
		if v, _ := pdu.Lookup(kvs, "AuthMethod"); v != "None" {
			return fmt.Errorf("fake target: AuthMethod %q", v)
		}
		if err := f.AnswerLogin(req, pdu.LoginResponse{Transit: true, NSG: pdu.StageOperational, TSIH: req.TSIH},
			Text("AuthMethod=None", "TargetPortalGroupTag=1")); err != nil {
			return err
		}
		if req, kvs, err = f.ReadLogin(); err != nil {
			return err
		}
	}
	answers := f.answer(o, kvs)
	if len(o.Offers) > 0 {
		if err := f.AnswerLogin(req, pdu.LoginResponse{TSIH: tsih}, pdu.AppendText(nil, append(answers, o.Offers...)...)); err != nil {
			return err
		}
		if req, _, err = f.ReadLogin(); err != nil {
			return err
		}
		answers = nil
	}
	f.mu.Lock()
	f.expCmdSN, f.maxCmdSN = req.CmdSN, req.CmdSN+o.Window-1
	f.mu.Unlock()
	if err := f.AnswerLogin(req, pdu.LoginResponse{Transit: true, NSG: pdu.StageFullFeature, TSIH: tsih}, pdu.AppendText(nil, answers...)); err != nil {
		return err
	}
	if !o.NoReader {
		f.startReader()
	}
	return nil
}

// answer returns the answers to the operational keys offered, and notes the
// digests they make.
func (f *Target) answer(o Login, kvs []pdu.KV) []pdu.KV {
	var answers []pdu.KV
	hd, dd := false, false
	for _, p := range kvs {
		v, ok := o.Answers[p.Key]
		if !ok {
			switch p.Key {
			case "HeaderDigest", "DataDigest":
				v = "None"
				if o.Digests && p.Value != "None" {
					v = "CRC32C"
				}
			case "MaxRecvDataSegmentLength", "InitiatorName", "InitiatorAlias", "TargetName", "SessionType":
				continue
			default:
				v = p.Value
			}
		}
		switch p.Key {
		case "HeaderDigest":
			hd = v == "CRC32C"
		case "DataDigest":
			dd = v == "CRC32C"
		}
		answers = append(answers, pdu.KV{Key: p.Key, Value: v})
	}
	if o.TargetMRDSL > 0 {
		answers = append(answers, pdu.KV{Key: "MaxRecvDataSegmentLength", Value: strconv.Itoa(o.TargetMRDSL)})
	}
	f.mu.Lock()
	f.hd, f.dd = hd, dd
	f.mu.Unlock()
	return answers
}

// Server hands a Target, logging in with one script, to every connection
// its Dial makes: a Config.Dial for a session of several connections.
type Server struct {
	t     TB
	tm    Timing
	ready chan ready

	mu      sync.Mutex
	login   Login
	targets []*Target
}

type ready struct {
	f   *Target
	err error
}

// NewServer returns a Server whose targets log in as o says; the test's
// cleanup closes it.
func NewServer(t TB, tm Timing, o Login) *Server {
	srv := &Server{t: t, tm: tm.withDefaults(), login: o, ready: make(chan ready, 16)}
	t.Cleanup(srv.Close)
	return srv
}

// SetLogin changes how the connections dialed from now on log in.
func (srv *Server) SetLogin(o Login) {
	srv.mu.Lock()
	srv.login = o
	srv.mu.Unlock()
}

// Dial returns the initiator's end of a pipe whose other end serves a login.
func (srv *Server) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	ini, tgt := net.Pipe()
	f := New(srv.t, tgt, srv.tm)
	srv.mu.Lock()
	srv.targets = append(srv.targets, f)
	o := srv.login
	srv.mu.Unlock()
	go func() { srv.ready <- ready{f, f.ServeLogin(o)} }()
	return ini, nil
}

// Next returns the target of the next connection whose login is over,
// failing the test if the login failed.
func (srv *Server) Next() *Target {
	srv.t.Helper()
	select {
	case r := <-srv.ready:
		if r.err != nil {
			srv.t.Fatalf("fake login: %v", r.err)
		}
		return r.f
	case <-time.After(srv.tm.Wait):
		srv.t.Fatalf("fake login: no connection in %v", srv.tm.Wait)
	}
	panic("unreachable")
}

// Targets returns the targets of the connections dialed, in order.
func (srv *Server) Targets() []*Target {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return append([]*Target(nil), srv.targets...)
}

// Close closes every connection and waits for the targets' readers.
func (srv *Server) Close() {
	for _, f := range srv.Targets() {
		f.Close()
		f.Wait()
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

// Scripted hands every connection its Dial makes a Target running script in
// a goroutine of its own: a Config.Dial for a login that should fail.
type Scripted struct {
	t      TB
	tm     Timing
	script func(f *Target) error
	wg     sync.WaitGroup

	mu      sync.Mutex
	targets []*Target
}

// NewScripted returns a Scripted running script; the caller closes it.
func NewScripted(t TB, tm Timing, script func(f *Target) error) *Scripted {
	return &Scripted{t: t, tm: tm, script: script}
}

// Dial returns the initiator's end of a pipe whose other end runs the script.
func (sc *Scripted) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	ini, tgt := net.Pipe()
	f := New(sc.t, tgt, sc.tm)
	sc.mu.Lock()
	sc.targets = append(sc.targets, f)
	sc.mu.Unlock()
	sc.wg.Add(1)
	go func() {
		defer sc.wg.Done()
		sc.script(f)
	}()
	return ini, nil
}

// Dials returns how many connections were dialed.
func (sc *Scripted) Dials() int {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return len(sc.targets)
}

// Close closes every connection and waits for the scripts and the readers
// they started; call it once no Dial can come.
func (sc *Scripted) Close() {
	sc.mu.Lock()
	targets := sc.targets
	sc.mu.Unlock()
	for _, f := range targets {
		f.Close()
	}
	sc.wg.Wait()
	for _, f := range targets {
		f.Wait()
	}
}
