package fuzz

// FuzzLogin and FuzzSession play a whole target from the fuzzer's bytes
// against the initiator, over net.Pipe: the login state machine in the one,
// a logged-in session's reader (with commands running) in the other, both
// ending with a logout. Whatever the bytes, each must end within its
// deadline with a result or a typed error, and leave no goroutine behind.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/faketarget"
	"github.com/goiscsi/iscsi/internal/testutil"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
	"go.uber.org/goleak"
)

const (
	// fuzzLoginTimeout is Config.LoginTimeout: every connection's login
	// ends within it.
	fuzzLoginTimeout = 250 * time.Millisecond
	// fuzzRedirects is Config.MaxRedirects.
	fuzzRedirects = 2
	// fuzzOpTimeout bounds each command and the logout's wait for its
	// response.
	fuzzOpTimeout = 100 * time.Millisecond
	// fuzzBudget is how long one input may take in all: a login with its
	// redirects and CHAP retry, a command, a logout. Past it the input
	// fails as a hang.
	fuzzBudget = 5 * time.Second
	// fuzzCredit is how long the scripted target waits for the initiator's
	// next request before it answers the last one again.
	fuzzCredit = 10 * time.Millisecond
	// fuzzMaxDials bounds the connections one input may open.
	fuzzMaxDials = 8
)

const (
	fuzzInitiator = "iqn.2026-01.org.goiscsi:fuzz-initiator"
	fuzzTargetIQN = "iqn.2026-01.org.goiscsi:fuzz-target"
	fuzzSecret    = "fuzz-secret-0123"
	fuzzTgtSecret = "fuzz-target-secret-4567"
)

// script is the fuzzer's bytes, consumed in order by the target's
// connections (one after the other, as redirects dial anew).
type script struct {
	mu sync.Mutex
	b  []byte
}

func (s *script) next() (byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.b) == 0 {
		return 0, false
	}
	c := s.b[0]
	s.b = s.b[1:]
	return c, true
}

// u8 returns the next byte, 0 past the end.
func (s *script) u8() byte { c, _ := s.next(); return c }

func (s *script) u16() uint16 { return uint16(s.u8())<<8 | uint16(s.u8()) }

func (s *script) u32() uint32 { return uint32(s.u16())<<16 | uint32(s.u16()) }

// take returns the next n bytes, padded with zeros past the end.
func (s *script) take(n int) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]byte, n)
	copy(out, s.b)
	s.b = s.b[min(n, len(s.b)):]
	return out
}

// data is a length-prefixed data segment: a 16-bit length, then the bytes.
func (s *script) data() []byte { return s.take(int(s.u16())) }

func (s *script) empty() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.b) == 0
}

// Script operations, the low 3 bits of an op byte.
const (
	opReply    = iota // answer the next request from the initiator
	opReplyOld        // answer a request already answered (index in the op byte)
	opRaw             // write raw bytes
	opHeader          // a header from the fuzzer, any opcode, lengths set
	opAsync           // an Asynchronous Message
	opClose           // close the connection (FIN on a pipe)
	opPause           // wait for the next request, answer nothing
	opNOPIn           // a NOP-In ping (TTT set), or an unsolicited one
	numOps
)

// fuzzConn is the target's end of one connection: a reader goroutine
// records the initiator's requests, and the script (or the automatic
// answers after it) writes.
type fuzzConn struct {
	nc net.Conn
	sc *script

	mu       sync.Mutex
	reqs     []pdu.BHS
	answered int
	statSN   uint32
	expCmdSN uint32
	arrived  chan struct{} // a token per new request, capacity 1
	// settled are the tags the target has answered for good: a status, a
	// Logout, Login, Text or Task Management Response, a NOP-In.
	settled map[uint32]bool
	// loggedOut is set once the target answered a logout with success.
	loggedOut bool
	readDone  chan struct{}

	wmu sync.Mutex
	w   *pdu.Writer
	// started is set once the reader runs: the script goroutine starts it
	// (start) before it returns, if ever.
	started bool
	done    chan struct{} // closed when the script goroutine returns
}

// A fuzzConn is not a faketarget.Target: the fuzzer plays the login too, so
// the target cannot know when (or whether) full feature phase begins, nor
// read the initiator's stream as PDUs once the fuzzed answers made it
// garbage; it records raw headers from the connection's first byte and
// drains what no longer parses. Where the login is a good one (FuzzSession)
// faketarget.ServeLogin plays it, and the fuzzConn takes over after.
func newFuzzConn(nc net.Conn, sc *script) *fuzzConn {
	return &fuzzConn{nc: nc, sc: sc, statSN: 0x100, arrived: make(chan struct{}, 1), settled: map[uint32]bool{},
		readDone: make(chan struct{}), w: pdu.NewWriter(nc), done: make(chan struct{})}
}

// start starts the reader, reading with the digests given; it runs on the
// script goroutine.
func (f *fuzzConn) start(hd, dd bool) {
	f.started = true
	go f.readLoop(pdu.ReaderConfig{From: pdu.FromInitiator, MaxDataSegmentLength: pdu.MaxDataSegmentLength, HeaderDigest: hd, DataDigest: dd})
}

// readLoop records every request the initiator sends (not Data-Out, nor
// the answers to our pings: they want no answer); once the stream no longer
// parses (digests it was not told of, garbage) it discards the rest.
func (f *fuzzConn) readLoop(cfg pdu.ReaderConfig) {
	defer close(f.readDone)
	r := pdu.NewReader(f.nc, cfg)
	for {
		h, err := r.Next()
		if err == nil {
			_, err = r.Data()
		}
		if err != nil {
			io.Copy(io.Discard, f.nc)
			return
		}
		if h.Opcode() == pdu.OpSCSIDataOut || (h.Opcode() == pdu.OpNOPOut && h.ITT() == 0xffffffff) {
			continue
		}
		f.mu.Lock()
		f.reqs = append(f.reqs, *h)
		switch h.Opcode() {
		case pdu.OpSCSICommand, pdu.OpTextRequest, pdu.OpLogoutRequest, pdu.OpLoginRequest, pdu.OpNOPOut, pdu.OpTaskMgmtRequest:
			if sn := binary.BigEndian.Uint32(h[24:]); !h.Immediate() && !pdu.SerialLess(sn+1, f.expCmdSN) {
				f.expCmdSN = sn + 1
			} else if f.expCmdSN == 0 {
				f.expCmdSN = sn
			}
		}
		f.mu.Unlock()
		select {
		case f.arrived <- struct{}{}:
		default:
		}
	}
}

// nextReq waits (briefly) for a request not yet answered and returns it; if
// none comes it returns the last one seen, and ok false when there is none.
func (f *fuzzConn) nextReq() (pdu.BHS, bool) {
	tm := time.NewTimer(fuzzCredit)
	defer tm.Stop()
	for {
		f.mu.Lock()
		if f.answered < len(f.reqs) {
			h := f.reqs[f.answered]
			f.answered++
			f.mu.Unlock()
			return h, true
		}
		n := len(f.reqs)
		var last pdu.BHS
		if n > 0 {
			last = f.reqs[n-1]
		}
		f.mu.Unlock()
		select {
		case <-f.arrived:
		case <-f.readDone:
			f.mu.Lock()
			more := f.answered < len(f.reqs)
			f.mu.Unlock()
			if !more {
				return last, n > 0
			}
		case <-tm.C:
			return last, n > 0
		}
	}
}

// oldReq returns request i (modulo those seen).
func (f *fuzzConn) oldReq(i int) (pdu.BHS, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reqs) == 0 {
		return pdu.BHS{}, false
	}
	return f.reqs[i%len(f.reqs)], true
}

// seq returns sequence numbers; status takes a StatSN.
func (f *fuzzConn) seq(status bool) pdu.SeqNums {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := pdu.SeqNums{StatSN: f.statSN, ExpCmdSN: f.expCmdSN, MaxCmdSN: f.expCmdSN + 31}
	if status {
		f.statSN++
	}
	return s
}

// fuzzSeq is seq, or with flag set sequence numbers from the script.
func (f *fuzzConn) fuzzSeq(flag, status bool) pdu.SeqNums {
	if flag {
		return pdu.SeqNums{StatSN: f.sc.u32(), ExpCmdSN: f.sc.u32(), MaxCmdSN: f.sc.u32()}
	}
	return f.seq(status)
}

func (f *fuzzConn) send(p pdu.PDU, data []byte) error {
	var h pdu.BHS
	p.MarshalBHS(&h)
	f.settle(&h)
	f.wmu.Lock()
	defer f.wmu.Unlock()
	return f.w.WritePDU(p, data)
}

// settle records a tag the target answers with h.
func (f *fuzzConn) settle(h *pdu.BHS) {
	switch h.Opcode() {
	case pdu.OpSCSIDataIn:
		if h[1]&0x01 == 0 {
			return
		}
	case pdu.OpSCSIResponse, pdu.OpLogoutResponse, pdu.OpLoginResponse, pdu.OpTextResponse, pdu.OpTaskMgmtResponse, pdu.OpNOPIn:
	default:
		return
	}
	f.mu.Lock()
	f.settled[h.ITT()] = true
	if h.Opcode() == pdu.OpLogoutResponse && pdu.LogoutResponseCode(h[2]) == pdu.LogoutSuccess {
		f.loggedOut = true
	}
	f.mu.Unlock()
}

func (f *fuzzConn) sendRaw(b []byte) error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	_, err := f.nc.Write(b)
	return err
}

func (f *fuzzConn) sendHeader(h *pdu.BHS, data []byte) error {
	f.settle(h)
	f.wmu.Lock()
	defer f.wmu.Unlock()
	f.w.AppendRaw(h, nil, data)
	return f.w.Flush()
}

// reply answers request h as the script says: the right response type for
// the request, its fields from the script.
func (f *fuzzConn) reply(h pdu.BHS) error {
	sc := f.sc
	fl := sc.u8()
	itt := h.ITT()
	if fl&0x80 != 0 {
		itt = sc.u32()
	}
	switch h.Opcode() {
	case pdu.OpLoginRequest:
		var req pdu.LoginRequest
		req.UnmarshalBHS(&h)
		resp := &pdu.LoginResponse{Transit: fl&1 != 0, Continue: fl&2 != 0, CSG: req.CSG, NSG: fl >> 2 & 3,
			ISID: req.ISID, ITT: itt, SeqNums: f.fuzzSeq(fl&0x40 != 0, true)}
		if fl&0x10 != 0 {
			resp.CSG = sc.u8() & 3
		}
		resp.TSIH = req.TSIH
		if t := sc.u16(); t != 0 {
			resp.TSIH = t
		}
		if st := sc.u8(); st != 0 {
			resp.StatusClass, resp.StatusDetail = st>>4&3, st&0xf
		}
		if fl&0x20 != 0 {
			resp.ISID[5] ^= 1
		}
		return f.send(resp, sc.data())
	case pdu.OpTextRequest:
		ttt := uint32(0xffffffff)
		if fl&4 != 0 {
			ttt = 0x1000 + uint32(fl)
		}
		return f.send(&pdu.TextResponse{Final: fl&1 != 0, Continue: fl&2 != 0, ITT: itt, TTT: ttt,
			SeqNums: f.fuzzSeq(fl&0x40 != 0, true)}, sc.data())
	case pdu.OpSCSICommand, pdu.OpSCSIDataOut:
		switch fl & 3 {
		case 0:
			return f.send(&pdu.SCSIResponse{ITT: itt, Status: sc.u8(), Response: fl >> 2 & 1,
				Underflow: fl&8 != 0, ResidualCount: uint32(sc.u16()), SeqNums: f.fuzzSeq(fl&0x40 != 0, true)}, sc.data())
		case 1:
			st := fl&4 != 0
			return f.send(&pdu.DataIn{Final: st || fl&8 != 0, HasStatus: st, Status: sc.u8(), ITT: itt, TTT: 0xffffffff,
				DataSN: uint32(sc.u8()), BufferOffset: uint32(sc.u16()), SeqNums: f.fuzzSeq(fl&0x40 != 0, st)}, sc.data())
		case 2:
			return f.send(&pdu.R2T{ITT: itt, TTT: uint32(fl), R2TSN: uint32(sc.u8()), BufferOffset: uint32(sc.u16()),
				DesiredDataTransferLength: uint32(sc.u16()), SeqNums: f.fuzzSeq(fl&0x40 != 0, false)}, nil)
		default:
			return f.send(&pdu.Reject{Reason: pdu.RejectReason(sc.u8()), ITT: 0xffffffff, SeqNums: f.fuzzSeq(fl&0x40 != 0, true)}, h[:])
		}
	case pdu.OpLogoutRequest:
		if fl&3 == 3 {
			return f.send(&pdu.Reject{Reason: pdu.RejectReason(sc.u8()), ITT: 0xffffffff, SeqNums: f.fuzzSeq(fl&0x40 != 0, true)}, h[:])
		}
		return f.send(&pdu.LogoutResponse{Response: pdu.LogoutResponseCode(fl >> 2 & 7), ITT: itt, Time2Wait: uint16(sc.u8()), Time2Retain: uint16(sc.u8()),
			SeqNums: f.fuzzSeq(fl&0x40 != 0, true)}, nil)
	case pdu.OpNOPOut:
		return f.send(&pdu.NOPIn{ITT: itt, TTT: binary.BigEndian.Uint32(h[20:]), SeqNums: f.fuzzSeq(fl&0x40 != 0, itt != 0xffffffff)}, sc.data())
	case pdu.OpTaskMgmtRequest:
		return f.send(&pdu.TaskMgmtResponse{Response: pdu.TMResponse(fl & 7), ITT: itt, SeqNums: f.fuzzSeq(fl&0x40 != 0, true)}, nil)
	}
	return nil
}

// step runs one script operation; false ends the script on this connection.
func (f *fuzzConn) step() bool {
	sc := f.sc
	op, ok := sc.next()
	if !ok {
		return false
	}
	var err error
	switch op % numOps {
	case opReply:
		if h, ok := f.nextReq(); ok {
			err = f.reply(h)
		}
	case opReplyOld:
		if h, ok := f.oldReq(int(op >> 3)); ok {
			err = f.reply(h)
		}
	case opRaw:
		err = f.sendRaw(sc.take(int(sc.u8())))
	case opHeader:
		var h pdu.BHS
		copy(h[:], sc.take(pdu.BHSLen))
		if op&0x08 != 0 {
			if r, ok := f.oldReq(int(op >> 4)); ok {
				binary.BigEndian.PutUint32(h[16:], r.ITT())
			}
		}
		if op&0x10 != 0 {
			s := f.seq(false)
			binary.BigEndian.PutUint32(h[24:], s.StatSN)
			binary.BigEndian.PutUint32(h[28:], s.ExpCmdSN)
			binary.BigEndian.PutUint32(h[32:], s.MaxCmdSN)
		}
		data := sc.data()
		if op&0x20 == 0 {
			h.SetLengths(0, len(data))
		}
		err = f.sendHeader(&h, data)
	case opAsync:
		a := &pdu.AsyncMessage{ITT: 0xffffffff, AsyncEvent: pdu.AsyncEvent(sc.u8() % 6), AsyncVCode: sc.u8(),
			Parameter1: uint16(sc.u8()), Parameter2: uint16(sc.u8()), Parameter3: uint16(sc.u8() % 4),
			SeqNums: f.fuzzSeq(op&0x08 != 0, true)}
		err = f.send(a, sc.data())
	case opClose:
		return false
	case opPause:
		f.nextReq()
		f.mu.Lock()
		f.answered = max(f.answered-1, 0)
		f.mu.Unlock()
	case opNOPIn:
		ttt := uint32(0xffffffff)
		if op&0x08 != 0 {
			ttt = uint32(op)
		}
		err = f.send(&pdu.NOPIn{ITT: 0xffffffff, TTT: ttt, SeqNums: f.seq(false)}, sc.data())
	}
	return err == nil
}

// auto answers what is left once the script is spent, as a well-behaved
// target would: every request the script left without a final answer gets
// good status, a NOP-In, logout success. It returns when the initiator
// closes the connection.
func (f *fuzzConn) auto() {
	next := 0
	for {
		f.mu.Lock()
		if f.loggedOut {
			// As a target does after a successful logout.
			f.mu.Unlock()
			f.nc.Close()
			return
		}
		var todo []pdu.BHS
		for ; next < len(f.reqs); next++ {
			if h := f.reqs[next]; !f.settled[h.ITT()] {
				todo = append(todo, h)
			}
		}
		f.mu.Unlock()
		for _, h := range todo {
			f.autoReply(h)
		}
		select {
		case <-f.arrived:
		case <-f.readDone:
			return
		}
	}
}

func (f *fuzzConn) autoReply(h pdu.BHS) {
	switch h.Opcode() {
	case pdu.OpSCSICommand:
		var c pdu.SCSICommand
		c.UnmarshalBHS(&h)
		if c.Read {
			f.send(&pdu.DataIn{Final: true, HasStatus: true, ITT: c.ITT, TTT: 0xffffffff, SeqNums: f.seq(true)},
				make([]byte, min(c.ExpectedDataTransferLength, 512)))
			return
		}
		f.send(&pdu.SCSIResponse{ITT: c.ITT, SeqNums: f.seq(true)}, nil)
	case pdu.OpLogoutRequest:
		f.send(&pdu.LogoutResponse{ITT: h.ITT(), SeqNums: f.seq(true)}, nil)
		f.nc.Close()
	case pdu.OpLoginRequest:
		// Nothing left to say to a login.
		f.nc.Close()
	case pdu.OpNOPOut:
		if h.ITT() != 0xffffffff {
			f.send(&pdu.NOPIn{ITT: h.ITT(), TTT: 0xffffffff, SeqNums: f.seq(true)}, nil)
		}
	case pdu.OpTaskMgmtRequest:
		f.send(&pdu.TaskMgmtResponse{ITT: h.ITT(), SeqNums: f.seq(true)}, nil)
	case pdu.OpTextRequest:
		f.send(&pdu.TextResponse{Final: true, ITT: h.ITT(), TTT: 0xffffffff, SeqNums: f.seq(true)}, nil)
	}
}

// close closes the target's end and waits for its goroutines.
func (f *fuzzConn) close(t *testing.T) {
	f.nc.Close()
	select {
	case <-f.done:
	case <-time.After(fuzzBudget):
		t.Fatalf("fuzz target: script did not end\n%s", stacks())
	}
	if !f.started {
		return
	}
	select {
	case <-f.readDone:
	case <-time.After(fuzzBudget):
		t.Fatalf("fuzz target: reader did not end\n%s", stacks())
	}
}

func stacks() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// typedErr reports whether err is one a caller can act on: a typed error of
// the library, a context's, or a connection that went away.
func typedErr(err error) bool {
	var (
		pe  *pdu.ProtocolError
		de  *pdu.DigestError
		te  *pdu.TextError
		le  *session.LoginError
		ne  *session.NegotiationError
		rj  *session.RejectError
		se  *session.SCSIError
		lre *session.LogoutResponseError
	)
	if errors.As(err, &pe) || errors.As(err, &de) || errors.As(err, &te) || errors.As(err, &le) ||
		errors.As(err, &ne) || errors.As(err, &rj) || errors.As(err, &se) || errors.As(err, &lre) {
		return true
	}
	for _, e := range []error{context.DeadlineExceeded, context.Canceled, os.ErrDeadlineExceeded,
		io.EOF, io.ErrUnexpectedEOF, io.ErrClosedPipe, net.ErrClosed,
		session.ErrClosed, session.ErrConnReset, session.ErrLoggedOut, session.ErrNotSent, session.ErrLogoutTimeout,
		session.ErrDeadPeer, session.ErrTargetDropped, session.ErrOutcomeUnknown, session.ErrLogoutRunning} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// checkTyped fails the input on an untyped error. It runs off the test's
// goroutine, hence Errorf.
func checkTyped(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil && !typedErr(err) {
		t.Errorf("%s: untyped error %T: %v", what, err, err)
	}
}

// pipeTarget dials the fuzz target: every connection the initiator opens
// gets the script where the previous one left it.
type pipeTarget struct {
	t   *testing.T
	sc  *script
	run func(f *fuzzConn) // the target's side of one connection
	// tcp connects over loopback TCP rather than net.Pipe: a TCP
	// connection is where a command reads its own response
	// (session/reader.go).
	tcp   bool
	mu    sync.Mutex
	conns []*fuzzConn
}

func (p *pipeTarget) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.conns) == fuzzMaxDials {
		return nil, fmt.Errorf("fuzz: more than %d connections", fuzzMaxDials)
	}
	if n := len(p.conns); n > 0 {
		// One connection at a time: the previous one's script ends first,
		// so that the bytes go to the connections in a fixed order.
		prev := p.conns[n-1]
		prev.nc.Close()
		select {
		case <-prev.done:
		case <-time.After(fuzzBudget):
			return nil, errors.New("fuzz: previous connection did not end")
		}
	}
	ini, tgt := net.Pipe()
	if p.tcp {
		tini, ttgt, err := faketarget.TCPPair(ctx)
		if err != nil {
			return nil, err
		}
		ini, tgt = tini, ttgt
	}
	f := newFuzzConn(tgt, p.sc)
	p.conns = append(p.conns, f)
	go func() {
		defer close(f.done)
		p.run(f)
	}()
	return ini, nil
}

func (p *pipeTarget) close() {
	p.mu.Lock()
	conns := p.conns
	p.mu.Unlock()
	for _, f := range conns {
		f.close(p.t)
	}
}

// within runs body and fails the input if it has not returned in budget.
// body reports with Errorf: it does not run on the test's goroutine.
func within(t *testing.T, budget time.Duration, body func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		body()
	}()
	select {
	case <-done:
	case <-time.After(budget):
		t.Fatalf("input did not end within %v\n%s", budget, stacks())
	}
}

// loginConfig is the session the fuzz targets log in; flags chooses CHAP,
// mutual CHAP, digests and a discovery session.
func loginConfig(flags byte, dial func(context.Context, string, string) (net.Conn, error)) session.Config {
	cfg := session.Config{InitiatorName: fuzzInitiator, TargetName: fuzzTargetIQN, Portal: "fuzz:3260",
		LoginTimeout: fuzzLoginTimeout, NOPInterval: -1, NOPTimeout: fuzzOpTimeout, MaxRedirects: fuzzRedirects, Dial: dial}
	if flags&1 != 0 {
		cfg.CHAP = &session.CHAP{User: "fuzz-user", Secret: fuzzSecret}
		if flags&2 != 0 {
			cfg.CHAP.TargetUser, cfg.CHAP.TargetSecret = "fuzz-target", fuzzTgtSecret
		}
	}
	if flags&4 != 0 {
		p := session.DefaultParams()
		p.HeaderDigest, p.DataDigest = true, true
		cfg.Params = &p
	}
	if flags&8 != 0 {
		cfg.TargetName = ""
	}
	return cfg
}

// FuzzLogin plays the target of a login from the fuzzer's bytes: the first
// byte chooses the initiator's configuration (CHAP, mutual CHAP, digests,
// discovery), the rest is a script of target operations (answers to the
// initiator's requests with fuzzed fields and text, raw bytes, headers of
// any opcode, async messages, closes), consumed by each connection the
// initiator dials in turn (redirects). A login that succeeds runs a
// command (SendTargets for discovery) and logs out.
func FuzzLogin(f *testing.F) {
	for _, s := range loginSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		fuzzLogin(t, in)
	})
}

func fuzzLogin(t *testing.T, in []byte) {
	sc := &script{b: in[1:]}
	pt := &pipeTarget{t: t, sc: sc, run: func(f *fuzzConn) {
		f.start(false, false)
		for f.step() {
		}
		if sc.empty() {
			// Spent: answer what else comes on this connection.
			f.auto()
		}
		f.nc.Close()
	}}
	defer pt.close()
	cfg := loginConfig(in[0], pt.dial)
	within(t, fuzzBudget, func() {
		ctx, cancel := context.WithTimeout(context.Background(), fuzzBudget/2)
		defer cancel()
		start := time.Now()
		s, err := session.Login(ctx, cfg)
		// Each connection's login is bounded by LoginTimeout; a CHAP retry
		// and the redirects dial again.
		bound := time.Duration(2*(fuzzRedirects+1)+1) * fuzzLoginTimeout
		if d := time.Since(start); d > bound+time.Second {
			t.Errorf("Login took %v, bound %v", d, bound)
		}
		if err != nil {
			if s != nil {
				t.Errorf("Login returned a session and an error: %v", err)
			}
			checkTyped(t, "Login", err)
			return
		}
		defer s.Close()
		afterLogin(t, s)
	})
}

// afterLogin runs a command on a logged-in session and logs it out.
func afterLogin(t *testing.T, s *session.Session) {
	ctx, cancel := context.WithTimeout(context.Background(), fuzzOpTimeout)
	if s.TargetName() == "" {
		_, err := s.SendTargets(ctx, "All")
		checkTyped(t, "SendTargets", err)
	} else {
		_, err := s.Execute(ctx, &session.Command{CDB: make([]byte, 6)})
		checkTyped(t, "TEST UNIT READY", err)
	}
	cancel()
	logoutCheck(t, s, session.LogoutOptions{Timeout: fuzzOpTimeout})
}

func logoutCheck(t *testing.T, s *session.Session, opts session.LogoutOptions) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*fuzzOpTimeout)
	defer cancel()
	start := time.Now()
	res, err := s.Logout(ctx, opts)
	if d := time.Since(start); d > 4*fuzzOpTimeout+time.Second {
		t.Errorf("Logout took %v", d)
	}
	checkTyped(t, "Logout", err)
	checkTyped(t, "Logout result", res.Err)
	if err == nil && res.Err != nil {
		t.Errorf("Logout: no error but result %+v", res)
	}
	if res.OK() && !s.LoggedOut() && res.Reason == pdu.LogoutCloseSession {
		t.Errorf("Logout OK %+v but the session does not say it logged out", res)
	}
}

// FuzzSession plays the target of a logged-in session from the fuzzer's
// bytes. The login itself is a correct one (the first byte chooses
// digests, R2T mode, the target's MaxRecvDataSegmentLength, a keepalive
// and the logout reason); then, while a read and a write run, the script
// answers them and the rest with fuzzed PDUs; once it is spent the target
// answers like a good one. The session logs out at the end.
func FuzzSession(f *testing.F) {
	for _, s := range sessionSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		fuzzSession(t, in, false)
	})
}

// FuzzSessionTCP is FuzzSession over loopback TCP, where a command that
// finds nobody reading its connection reads its own response
// (session/reader.go) and reads and writes are raw system calls
// (internal/sockio).
func FuzzSessionTCP(f *testing.F) {
	for _, s := range sessionSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		fuzzSession(t, in, true)
	})
}

// fuzzMRDSL are the target's MaxRecvDataSegmentLength choices.
var fuzzMRDSL = [4]int{512, 4096, 8192, 65536}

func fuzzSession(t *testing.T, in []byte, tcp bool) {
	flags := in[0]
	hd, dd := flags&1 != 0, flags&2 != 0
	r2t := flags&4 != 0
	mrdsl := fuzzMRDSL[flags>>3&3]
	sc := &script{b: in[1:]}
	loginErr := make(chan error, 1)
	pt := &pipeTarget{t: t, sc: sc, tcp: tcp, run: func(f *fuzzConn) {
		err := goodLogin(t, f, r2t, mrdsl)
		loginErr <- err
		if err != nil {
			return
		}
		for f.step() {
		}
		if sc.empty() {
			f.auto()
		}
		f.nc.Close()
	}}
	defer pt.close()
	cfg := session.Config{InitiatorName: fuzzInitiator, TargetName: fuzzTargetIQN, Portal: "fuzz:3260",
		LoginTimeout: time.Second, NOPInterval: -1, NOPTimeout: fuzzOpTimeout, Dial: pt.dial}
	p := session.DefaultParams()
	p.HeaderDigest, p.DataDigest = hd, dd
	if r2t {
		p.InitialR2T, p.ImmediateData = true, false
	}
	p.MaxBurstLength, p.FirstBurstLength = 16384, 4096
	cfg.Params = &p
	if flags&0x20 != 0 {
		cfg.NOPInterval, cfg.NOPTimeout = 20*time.Millisecond, 60*time.Millisecond
	}
	within(t, fuzzBudget, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s, err := session.Login(ctx, cfg)
		if err != nil {
			var terr error
			select {
			case terr = <-loginErr:
			case <-time.After(time.Second):
			}
			t.Errorf("the scripted login failed: %v (target: %v)", err, terr)
			return
		}
		defer s.Close()
		fc := pt.conns[0]
		var wg sync.WaitGroup
		run := func(cmd *session.Command) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), fuzzOpTimeout)
				defer cancel()
				res, err := s.Execute(ctx, cmd)
				checkTyped(t, "Execute", err)
				if err == nil && (res.N < 0 || res.N > max(len(cmd.Read), len(cmd.Write))) {
					t.Errorf("Execute: N %d of %d", res.N, max(len(cmd.Read), len(cmd.Write)))
				}
			}()
		}
		run(&session.Command{LUN: 1, CDB: testutil.RW16(0x88, 0, 8*512, 512), Read: make([]byte, 4096)})
		// The write goes second, so that the script meets the commands in
		// a fixed order.
		waitReqs(fc, 1)
		run(&session.Command{LUN: 1, CDB: testutil.RW16(0x8a, 0, 16*512, 512), Write: bytes.Repeat([]byte{0xa5}, 8192)})
		wg.Wait()
		opts := session.LogoutOptions{Timeout: fuzzOpTimeout}
		if flags&0x40 != 0 {
			opts.DrainTimeout = fuzzOpTimeout / 2
		}
		if flags&0x80 != 0 {
			if cs := s.Conns(); len(cs) > 0 {
				opts.Reason = pdu.LogoutCloseConnection
				lctx, cancel := context.WithTimeout(context.Background(), 4*fuzzOpTimeout)
				res := cs[0].Logout(lctx, opts)
				cancel()
				checkTyped(t, "Conn.Logout", res.Err)
				return
			}
		}
		logoutCheck(t, s, opts)
	})
}

// waitReqs waits a moment for the target to have received n full feature
// requests, past the login's.
func waitReqs(f *fuzzConn, n int) {
	deadline := time.NewTimer(fuzzCredit)
	defer deadline.Stop()
	for {
		f.mu.Lock()
		got := 0
		for _, h := range f.reqs {
			if h.Opcode() != pdu.OpLoginRequest {
				got++
			}
		}
		f.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-f.arrived:
			// Put the token back for the script.
			select {
			case f.arrived <- struct{}{}:
			default:
			}
			runtime.Gosched()
		case <-f.readDone:
			return
		case <-deadline.C:
			return
		}
	}
}

// goodLogin answers a login correctly with faketarget.ServeLogin:
// AuthMethod=None, then the operational keys with the digests the initiator
// offers, the given R2T mode and receive length. The fuzzConn then reads and
// writes the connection, its sequence numbers going on from the login's.
func goodLogin(t *testing.T, f *fuzzConn, r2t bool, mrdsl int) error {
	tf := faketarget.New(t, f.nc, faketarget.Timing{Wait: fuzzBudget})
	err := tf.ServeLogin(faketarget.Login{TSIH: 0x4242, Digests: true, TargetMRDSL: mrdsl, NoReader: true,
		Answers: map[string]string{"InitialR2T": pdu.FormatBool(r2t), "ImmediateData": pdu.FormatBool(!r2t),
			"MaxBurstLength": "16384", "FirstBurstLength": "4096"}})
	if err != nil {
		return err
	}
	seq := tf.Seq(false)
	f.mu.Lock()
	f.statSN, f.expCmdSN = seq.StatSN, seq.ExpCmdSN
	f.mu.Unlock()
	hd, dd := tf.Digests()
	f.wmu.Lock()
	f.w.SetDigests(hd, dd)
	f.wmu.Unlock()
	f.start(hd, dd)
	return nil
}

// Seeds. Script bytes are built with these helpers.

type scriptBuilder struct{ b []byte }

func (s *scriptBuilder) op(op byte, rest ...byte) *scriptBuilder {
	s.b = append(append(s.b, op), rest...)
	return s
}

func (s *scriptBuilder) u16(v int) *scriptBuilder {
	s.b = binary.BigEndian.AppendUint16(s.b, uint16(v))
	return s
}

func (s *scriptBuilder) text(kvs ...string) *scriptBuilder {
	var t []byte
	for _, kv := range kvs {
		t = append(append(t, kv...), 0)
	}
	return s.u16(len(t)).raw(t...)
}

func (s *scriptBuilder) raw(b ...byte) *scriptBuilder {
	s.b = append(s.b, b...)
	return s
}

// loginReply appends a reply to a login request: flags (bit 0 transit,
// bits 2-3 NSG), TSIH and status, then the text.
func (s *scriptBuilder) loginReply(flags byte, tsih int, status byte, kvs ...string) *scriptBuilder {
	return s.op(opReply, flags).u16(tsih).raw(status).text(kvs...)
}

var operational = []string{"HeaderDigest=None", "DataDigest=None", "MaxRecvDataSegmentLength=8192", "InitialR2T=Yes", "ImmediateData=Yes"}

func loginSeeds() [][]byte {
	var seeds [][]byte
	add := func(flags byte, s *scriptBuilder) { seeds = append(seeds, append([]byte{flags}, s.b...)) }
	good := func(s *scriptBuilder) *scriptBuilder {
		return s.loginReply(1|1<<2, 0, 0, "AuthMethod=None", "TargetPortalGroupTag=1").
			loginReply(1|3<<2, 0x11, 0, operational...)
	}
	// A clean login, command and logout.
	add(0, good(&scriptBuilder{}).op(opReply, 0).raw(0).u16(0).u16(0).op(opReply, 0, 0, 0))
	// Spent at once: the automatic answers.
	add(0, good(&scriptBuilder{}))
	// Digests.
	add(4, (&scriptBuilder{}).loginReply(1|1<<2, 0, 0, "AuthMethod=None").
		loginReply(1|3<<2, 0x11, 0, "HeaderDigest=CRC32C", "DataDigest=CRC32C"))
	// Discovery, with a SendTargets answer.
	discovery := func(s *scriptBuilder) *scriptBuilder {
		return s.loginReply(1|1<<2, 0, 0, "AuthMethod=None").loginReply(1|3<<2, 0x11, 0, operational[:3]...)
	}
	add(8, discovery(&scriptBuilder{}).op(opReply, 1).text("TargetName=iqn.2026-01.org.goiscsi:x", "TargetAddress=10.0.0.1:3260,1"))
	add(8, discovery(&scriptBuilder{}).op(opReply, 1).text("TargetAddress=10.0.0.1:3260,1", "TargetName=iqn.2026-01.org.goiscsi:x"))
	add(8, discovery(&scriptBuilder{}).op(opReply, 2|4).text("TargetName=iqn.2026-01.org.goiscsi:x").op(opReply, 1).text("TargetAddress=[::1]:3260,1"))
	// Operational stage over two exchanges, with a key the target offers.
	add(0, (&scriptBuilder{}).loginReply(1|1<<2, 0, 0, "AuthMethod=None").
		loginReply(0, 0x11, 0, "HeaderDigest=None", "X-com.example.Foo=1", "MaxConnections=2").
		loginReply(1|3<<2, 0x11, 0))
	// Continue: text in two PDUs.
	add(0, (&scriptBuilder{}).loginReply(2, 0, 0, "AuthMethod=None").op(opReply, 1|1<<2).u16(0).raw(0).text("TargetPortalGroupTag=1"))
	// CHAP, one-way and mutual (the mutual answer cannot be right).
	chap := func(s *scriptBuilder) *scriptBuilder {
		return s.loginReply(0, 0, 0, "AuthMethod=CHAP").
			loginReply(0, 0, 0, "CHAP_A=5", "CHAP_I=7", "CHAP_C=0x0123456789abcdef0123456789abcdef").
			loginReply(1|1<<2, 0, 0).loginReply(1|3<<2, 0x11, 0, operational...)
	}
	add(1, chap(&scriptBuilder{}))
	add(3, (&scriptBuilder{}).loginReply(0, 0, 0, "AuthMethod=CHAP").
		loginReply(0, 0, 0, "CHAP_A=7", "CHAP_I=7", "CHAP_C=0x0123456789abcdef0123456789abcdef").
		loginReply(1|1<<2, 0, 0, "CHAP_N=fuzz-target", "CHAP_R=0x00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"))
	add(1, (&scriptBuilder{}).loginReply(0, 0, 0, "AuthMethod=CHAP").
		loginReply(0, 0, 0, "CHAP_A=6", "CHAP_I=256", "CHAP_C=0xabc"))
	// Redirects, then a good login on the last connection.
	redirect := func(s *scriptBuilder) *scriptBuilder {
		return s.loginReply(0, 0, 0x11, "TargetAddress=10.0.0.2:3261,1").op(opClose)
	}
	add(0, good(redirect(&scriptBuilder{})))
	add(0, redirect(redirect(redirect(&scriptBuilder{}))))
	// Refusals and hostile answers.
	add(0, (&scriptBuilder{}).loginReply(0, 0, 0x23, ""))
	add(0, (&scriptBuilder{}).loginReply(1|1<<2, 0, 0, "AuthMethod=None").loginReply(1|3<<2, 0, 0))
	add(0, (&scriptBuilder{}).op(opReply, 0x20|1|1<<2).u16(0).raw(0).text("AuthMethod=None"))
	add(0, (&scriptBuilder{}).loginReply(1|1<<2, 0, 0, "AuthMethod"))
	add(0, (&scriptBuilder{}).loginReply(1|1<<2, 0, 0, "AuthMethod=None", "AuthMethod=None"))
	add(0, (&scriptBuilder{}).op(opHeader|0x08|0x20).raw(hdr(&pdu.LoginResponse{Transit: true, NSG: 1}, 0, 1<<24-1)...).u16(0))
	add(0, (&scriptBuilder{}).op(opHeader|0x08).raw(hdr(&pdu.NOPIn{ITT: 0xffffffff, TTT: 0xffffffff}, 0, 0)...).u16(0))
	add(0, (&scriptBuilder{}).op(opRaw, 48).raw(bytes.Repeat([]byte{0x3f}, 48)...))
	add(0, (&scriptBuilder{}).op(opAsync, 1, 0, 0, 0, 0).u16(0))
	return seeds
}

// hdr is p's header with the given TotalAHSLength (in words) and
// DataSegmentLength, whatever follows.
func hdr(p pdu.PDU, ahsWords, dataLen int) []byte {
	var h pdu.BHS
	p.MarshalBHS(&h)
	h[4] = byte(ahsWords)
	h[5], h[6], h[7] = byte(dataLen>>16), byte(dataLen>>8), byte(dataLen)
	return h[:]
}

func sessionSeeds() [][]byte {
	var seeds [][]byte
	add := func(flags byte, s *scriptBuilder) { seeds = append(seeds, append([]byte{flags}, s.b...)) }
	// Everything answered by the automatic target.
	for _, flags := range []byte{0, 1, 2, 3, 4, 0x08, 0x18, 0x20, 0x40, 0x80} {
		add(flags, &scriptBuilder{})
	}
	// The read answered with two Data-Ins, the write with status.
	add(0, (&scriptBuilder{}).
		op(opReply, 1, 0, 0).u16(0).u16(2048).raw(make([]byte, 2048)...).
		op(opReplyOld, 1|4, 0, 1).u16(2048).u16(2048).raw(make([]byte, 2048)...).
		op(opReply, 0, 0).u16(0).u16(0))
	// R2T mode: R2Ts inside and outside the write.
	add(4, (&scriptBuilder{}).op(opReply, 1|4, 0, 0).u16(0).u16(0).
		op(opReply, 2, 0).u16(0).u16(4096).op(opReply, 2, 1).u16(0x1000).u16(0xf000))
	// Data-In past the buffer, DataSN out of order, a digest error.
	add(0, (&scriptBuilder{}).op(opReply, 1|4, 0, 0).u16(4000).u16(200).raw(make([]byte, 200)...))
	add(0, (&scriptBuilder{}).op(opReply, 1, 0, 5).u16(0).u16(512).raw(make([]byte, 512)...))
	add(1, (&scriptBuilder{}).op(opRaw, 52).raw(append(hdr(&pdu.NOPIn{ITT: 0xffffffff, TTT: 0xffffffff}, 0, 0), 1, 2, 3, 4)...))
	add(2, (&scriptBuilder{}).op(opReply, 1|4, 0, 0).u16(0).u16(512).raw(make([]byte, 512)...).op(opRaw, 4, 0, 0, 0, 0))
	// Async events 1 (Parameter3 0 and 3), 2, 3, 4.
	for _, ev := range [][]byte{{1, 0, 0, 0, 0}, {1, 0, 0, 0, 3}, {2, 0, 0, 2, 20}, {2, 0, 9, 2, 20}, {3, 0, 0, 2, 20}, {4, 0, 0, 0, 0}} {
		add(0, (&scriptBuilder{}).op(opAsync).raw(ev...).u16(0))
	}
	// Logout refused, rejected, answered for another tag.
	for _, code := range []byte{1 << 2, 2 << 2, 3 << 2, 3, 0x80} {
		add(0, (&scriptBuilder{}).op(opReply, 1|4, 0, 0).u16(0).u16(0).op(opReply, 0, 0).u16(0).u16(0).
			op(opPause).op(opReply, code, 2, 20, 0, 0, 0, 0))
	}
	// 16 MiB data segment, AHS past the PDU, unknown opcode, window
	// shrinking, StatSN going back, a Reject of the read.
	add(0, (&scriptBuilder{}).op(opRaw, 48).raw(hdr(&pdu.DataIn{ITT: 1, TTT: 0xffffffff}, 0, 1<<24-1)...))
	add(0, (&scriptBuilder{}).op(opRaw, 48).raw(hdr(&pdu.SCSIResponse{ITT: 1}, 255, 0)...))
	add(0, (&scriptBuilder{}).op(opRaw, 48).raw(append([]byte{0x3e}, make([]byte, 47)...)...))
	add(0, (&scriptBuilder{}).op(opReply, 0x40|1|4, 0, 0).raw(0, 0, 0, 9, 0, 0, 0, 5, 0, 0, 0, 1).u16(0).u16(0))
	add(0, (&scriptBuilder{}).op(opReply, 3, byte(pdu.RejectInvalidPDUField)))
	add(0x20, (&scriptBuilder{}).op(opNOPIn|0x08).u16(4).raw(1, 2, 3, 4))
	return seeds
}

// TestSessionFuzzSeeds runs every seed of the session fuzz targets, the
// session's over net.Pipe and over TCP, and checks that none leaves a
// goroutine behind.
func TestSessionFuzzSeeds(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	for i, s := range loginSeeds() {
		t.Run(fmt.Sprintf("login%02d", i), func(t *testing.T) { fuzzLogin(t, s) })
	}
	for i, s := range sessionSeeds() {
		t.Run(fmt.Sprintf("session%02d", i), func(t *testing.T) { fuzzSession(t, s, false) })
		t.Run(fmt.Sprintf("session%02d/tcp", i), func(t *testing.T) { fuzzSession(t, s, true) })
	}
}
