// Package faketarget is a test helper: a scripted iSCSI target on the far end
// of a net.Pipe, which the test drives PDU by PDU, reading exactly what the
// initiator sent and writing back exact PDUs or raw bytes, hostile ones
// included.
//
// It speaks just enough login to reach full feature phase and imports no
// initiator package, so the session package's own tests can use it.
package faketarget

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/goiscsi/iscsi/pdu"
)

// TB is the part of testing.TB a target fails a test through.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// Timing bounds a target's waits; each test package keeps its own.
type Timing struct {
	// Wait bounds each wait for something that should happen; 0 means 5s.
	Wait time.Duration
	// Quiet is how long ExpectNothing watches for something that should
	// not happen; 0 means 100ms.
	Quiet time.Duration
}

func (tm Timing) withDefaults() Timing {
	if tm.Wait == 0 {
		tm.Wait = 5 * time.Second
	}
	if tm.Quiet == 0 {
		tm.Quiet = 100 * time.Millisecond
	}
	return tm
}

// Target is the target's end of one connection.
type Target struct {
	t   TB
	tm  Timing
	nc  net.Conn
	r   *pdu.Reader
	wmu sync.Mutex
	w   *pdu.Writer

	in         chan PDU
	readerDone chan struct{}
	started    atomic.Bool // the reader ServeLogin starts runs
	closeOnce  sync.Once

	mu       sync.Mutex
	statSN   uint32
	expCmdSN uint32
	maxCmdSN uint32
	window   uint32
	frozen   bool
	hd, dd   bool // digests negotiated
	// loginReqs and loginKeys are what the initiator sent during login.
	loginReqs []pdu.LoginRequest
	loginKeys []pdu.KV
}

// PDU is one PDU the initiator sent, its data copied.
type PDU struct {
	BHS  pdu.BHS
	PDU  pdu.PDU
	Data []byte
}

// Opcode returns the PDU's opcode.
func (x PDU) Opcode() pdu.Opcode { return x.BHS.Opcode() }

// New returns a target speaking on nc, the target's end of a pipe; it reads
// nothing until the test asks it to.
func New(t TB, nc net.Conn, tm Timing) *Target {
	return &Target{t: t, tm: tm.withDefaults(), nc: nc, r: pdu.NewReader(nc, pdu.ReaderConfig{From: pdu.FromInitiator}),
		w: pdu.NewWriter(nc), in: make(chan PDU, 4096), readerDone: make(chan struct{}), statSN: 0x7000}
}

// startReader makes the connection full feature phase: PDUs are read, with
// the digests negotiated, into the channel In returns.
func (f *Target) startReader() {
	f.mu.Lock()
	hd, dd := f.hd, f.dd
	f.mu.Unlock()
	f.r.SetConfig(pdu.ReaderConfig{From: pdu.FromInitiator, MaxDataSegmentLength: 1 << 20, HeaderDigest: hd, DataDigest: dd})
	f.wmu.Lock()
	f.w.SetDigests(hd, dd)
	f.wmu.Unlock()
	f.started.Store(true)
	go f.readLoop()
}

func (f *Target) readLoop() {
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
		x := PDU{BHS: *h, PDU: p, Data: append([]byte(nil), data...)}
		f.track(x)
		f.in <- x
	}
}

// track follows the initiator's CmdSN, so that ExpCmdSN and MaxCmdSN keep
// the window open, unless Freeze stopped them.
func (f *Target) track(x PDU) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.frozen || x.BHS.Immediate() {
		return
	}
	var sn uint32
	switch p := x.PDU.(type) {
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

// Freeze stops ExpCmdSN and MaxCmdSN from following the commands, so that
// the window closes.
func (f *Target) Freeze() {
	f.mu.Lock()
	f.frozen = true
	f.mu.Unlock()
}

// Seq returns the sequence numbers for the next PDU; with status it takes a
// StatSN.
func (f *Target) Seq(status bool) pdu.SeqNums {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := pdu.SeqNums{StatSN: f.statSN, ExpCmdSN: f.expCmdSN, MaxCmdSN: f.maxCmdSN}
	if status {
		f.statSN++
	}
	return s
}

// In returns the PDUs the initiator sent in full feature phase, for a test
// waiting on several targets at once; it is closed with the connection.
func (f *Target) In() <-chan PDU { return f.in }

// Next returns the next PDU from the initiator.
func (f *Target) Next() PDU {
	f.t.Helper()
	select {
	case x, ok := <-f.in:
		if !ok {
			f.t.Fatalf("fake target: the initiator closed the connection")
		}
		return x
	case <-time.After(f.tm.Wait):
		f.t.Fatalf("fake target: nothing from the initiator in %v", f.tm.Wait)
	}
	panic("unreachable")
}

// Expect returns the next PDU, which must have opcode op; keepalive
// NOP-Outs are skipped unless op is OpNOPOut.
func (f *Target) Expect(op pdu.Opcode) PDU {
	f.t.Helper()
	for {
		x := f.Next()
		if x.Opcode() == op {
			return x
		}
		if x.Opcode() == pdu.OpNOPOut {
			continue
		}
		f.t.Fatalf("fake target: got %s, want %s", x.Opcode(), op)
	}
}

// ExpectNothing checks that the initiator sends nothing but keepalive
// NOP-Outs for a while.
func (f *Target) ExpectNothing() {
	f.t.Helper()
	f.onlyNOPs(time.After(f.tm.Quiet), "nothing")
}

// ExpectClosed waits for the initiator to close the connection, failing on
// any PDU but NOP-Out before.
func (f *Target) ExpectClosed() {
	f.t.Helper()
	if !f.onlyNOPs(time.After(f.tm.Wait), "the connection closed") {
		f.t.Fatalf("fake target: connection still open after %v", f.tm.Wait)
	}
}

// onlyNOPs fails the test on any PDU but NOP-Out until the connection
// closes (it returns true) or until (false).
func (f *Target) onlyNOPs(until <-chan time.Time, want string) bool {
	f.t.Helper()
	for {
		select {
		case x, ok := <-f.in:
			if !ok {
				return true
			}
			if x.Opcode() != pdu.OpNOPOut {
				f.t.Fatalf("fake target: got %s, want %s", x.Opcode(), want)
			}
		case <-until:
			return false
		}
	}
}

// Send writes one PDU with the digests negotiated; it fails only the write,
// not the test, since a hostile PDU often makes the initiator close the
// connection under it.
func (f *Target) Send(p pdu.PDU, data []byte) error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	return f.w.WritePDU(p, data)
}

// MustSend is Send failing the test on an error.
func (f *Target) MustSend(p pdu.PDU, data []byte) {
	f.t.Helper()
	if err := f.Send(p, data); err != nil {
		f.t.Fatalf("fake target: send %s: %v", p.Opcode(), err)
	}
}

// SendRaw writes b exactly as given: a header with lengths that lie, half a
// PDU, bytes Wire made and the test then broke.
func (f *Target) SendRaw(b []byte) error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	_, err := f.nc.Write(b)
	return err
}

// Wire returns the bytes Send would write for p and data, with the digests
// negotiated, for the test to alter and send with SendRaw.
func (f *Target) Wire(p pdu.PDU, data []byte) []byte {
	f.t.Helper()
	f.mu.Lock()
	hd, dd := f.hd, f.dd
	f.mu.Unlock()
	var buf bytes.Buffer
	w := pdu.NewWriter(&buf)
	w.SetDigests(hd, dd)
	if err := w.WritePDU(p, data); err != nil {
		f.t.Fatalf("fake target: %s on the wire: %v", p.Opcode(), err)
	}
	return buf.Bytes()
}

// Good answers a SCSI command with GOOD status.
func (f *Target) Good(cmd PDU) {
	f.t.Helper()
	c := cmd.PDU.(*pdu.SCSICommand)
	f.MustSend(&pdu.SCSIResponse{ITT: c.ITT, SeqNums: f.Seq(true)}, nil)
}

// ReadData answers a read command with data and status in one Data-In.
func (f *Target) ReadData(cmd PDU, data []byte) {
	f.t.Helper()
	c := cmd.PDU.(*pdu.SCSICommand)
	f.MustSend(&pdu.DataIn{Final: true, HasStatus: true, ITT: c.ITT, TTT: pdu.ReservedTag, SeqNums: f.Seq(true)}, data)
}

// Ping sends a NOP-In that asks for an answer and waits for it: once it
// comes, the initiator's reader has handled everything sent before.
func (f *Target) Ping() {
	f.t.Helper()
	f.MustSend(&pdu.NOPIn{ITT: pdu.ReservedTag, TTT: 0x5157, LUN: 0, SeqNums: f.Seq(false)}, nil)
	for {
		x := f.Expect(pdu.OpNOPOut)
		if x.PDU.(*pdu.NOPOut).TTT == 0x5157 {
			return
		}
	}
}

// AnswerLogout answers a Logout Request with response code resp.
func (f *Target) AnswerLogout(x PDU, resp pdu.LogoutResponseCode) {
	f.t.Helper()
	r := x.PDU.(*pdu.LogoutRequest)
	f.MustSend(&pdu.LogoutResponse{Response: resp, ITT: r.ITT, SeqNums: f.Seq(true)}, nil)
}

// Close closes the target's end of the connection; it may be called more
// than once.
func (f *Target) Close() {
	f.closeOnce.Do(func() { f.nc.Close() })
}

// Wait waits for the reader ServeLogin started, if it did, to end after
// Close. The goroutine that ran ServeLogin must have returned first.
func (f *Target) Wait() {
	if f.started.Load() {
		<-f.readerDone
	}
}

// AsProtocolError returns err's *pdu.ProtocolError, the initiator's answer
// to a hostile PDU, failing the test if it has none or it names another
// opcode or field.
func AsProtocolError(t TB, err error, op pdu.Opcode, field string) *pdu.ProtocolError {
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
