package reliability

// Fault matrix, full feature phase rows (docs/RELIABILITY.md).

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/faketarget"
	"github.com/goiscsi/iscsi/internal/testutil"
	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/pdu"
	"github.com/goiscsi/iscsi/session"
)

// dropped checks that a hostile PDU cost the connection: the initiator
// closed it and the session (of one connection) ended.
func dropped(t *testing.T, s *session.Session, f *faketarget.Target) {
	t.Helper()
	f.ExpectClosed()
	waitEnded(t, s)
}

// kept checks that the session still does I/O on the fake.
func kept(t *testing.T, s *session.Session, f *faketarget.Target) {
	t.Helper()
	ch := goExecute(context.Background(), s, readCmd(512))
	want := pattern(512, 0x42)
	cmd := f.Expect(pdu.OpSCSICommand)
	f.ReadData(cmd, want)
	if r := waitExec(t, ch); r.err != nil || r.res.N != 512 {
		t.Fatalf("I/O after the fault: %+v %v", r.res, r.err)
	}
}

// hostileAfterRead logs in, starts a 512-byte read and lets the target
// answer it with raw bytes; it returns the read's outcome.
func hostileAfterRead(t *testing.T, o faketarget.Login, cfg session.Config, raw func(f *faketarget.Target, cmd *pdu.SCSICommand) []byte) (*session.Session, *faketarget.Target, execResult) {
	t.Helper()
	s, f := fakeSession(t, cfg, o)
	ch := goExecute(context.Background(), s, readCmd(512))
	cmd := f.Expect(pdu.OpSCSICommand).PDU.(*pdu.SCSICommand)
	f.SendRaw(raw(f, cmd))
	return s, f, waitExec(t, ch)
}

// An undefined opcode, and an initiator opcode, from the target →
// *pdu.ProtocolError (Opcode); the command fails; connection dropped.
func TestFaultUnknownOpcode(t *testing.T) {
	for _, op := range []pdu.Opcode{0x3e, pdu.OpSCSICommand} {
		t.Run(op.String(), func(t *testing.T) {
			s, f, r := hostileAfterRead(t, faketarget.Login{}, testConfig(), func(f *faketarget.Target, cmd *pdu.SCSICommand) []byte {
				var h pdu.BHS
				h[0], h[1] = byte(op), 0x80
				return h[:]
			})
			faketarget.AsProtocolError(t, r.err, op, "Opcode")
			dropped(t, s, f)
		})
	}
}

// DataSegmentLength 16 MiB in full feature phase → *pdu.ProtocolError
// (DataSegmentLength) before anything is allocated; connection dropped.
func TestFaultDataSegment16MiB(t *testing.T) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	s, f, r := hostileAfterRead(t, faketarget.Login{}, testConfig(), func(f *faketarget.Target, cmd *pdu.SCSICommand) []byte {
		var h pdu.BHS
		(&pdu.DataIn{ITT: cmd.ITT, TTT: 0xffffffff, SeqNums: f.Seq(false)}).MarshalBHS(&h)
		h.SetLengths(0, pdu.MaxDataSegmentLength)
		return h[:]
	})
	runtime.ReadMemStats(&after)
	faketarget.AsProtocolError(t, r.err, pdu.OpSCSIDataIn, "DataSegmentLength")
	dropped(t, s, f)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 4<<20 {
		t.Errorf("%d bytes allocated for a refused 16 MiB segment", grew)
	}
}

// TotalAHSLength 255 words on a PDU that has none (the stream then holds
// fewer bytes than it claims) → *pdu.ProtocolError (TotalAHSLength);
// connection dropped.
func TestFaultAHSPastPDU(t *testing.T) {
	s, f, r := hostileAfterRead(t, faketarget.Login{}, testConfig(), func(f *faketarget.Target, cmd *pdu.SCSICommand) []byte {
		var h pdu.BHS
		(&pdu.SCSIResponse{ITT: cmd.ITT, SeqNums: f.Seq(true)}).MarshalBHS(&h)
		h[4] = 255
		return append(h[:], 1, 2, 3, 4)
	})
	faketarget.AsProtocolError(t, r.err, pdu.OpSCSIResponse, "TotalAHSLength")
	dropped(t, s, f)
}

// digestConfig offers both digests at ErrorRecoveryLevel 0: the fault tests
// that use it check ERL 0's answer to a digest error, a connection failed
// (ERL 1's: TestFaultDigestMismatchERL1 here, session's TestERL1* tests).
func digestConfig() session.Config {
	cfg := testConfig()
	p := session.DefaultParams()
	p.HeaderDigest, p.DataDigest = true, true
	p.ErrorRecoveryLevel = 0
	cfg.Params = &p
	return cfg
}

// At ErrorRecoveryLevel 1, a digest error that the target then leaves
// unrecovered (a Data SNACK for a corrupted data segment, a NOP-Out sent
// after a corrupted header: neither answered) → session.ErrRecoveryFailed
// within the SNACK timeout, never a wait on the caller's context alone (the
// command here has none, the keepalive is off); connection dropped.
func TestFaultDigestMismatchERL1(t *testing.T) {
	for _, tc := range []struct {
		name    string
		corrupt func(b []byte)
		sent    pdu.Opcode // what the initiator asks with
	}{
		{"header", func(b []byte) { b[pdu.BHSLen] ^= 0x01 }, pdu.OpNOPOut},
		{"data", func(b []byte) { b[pdu.BHSLen+4+100] ^= 0x80 }, pdu.OpSNACKRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := digestConfig()
			cfg.Params.ErrorRecoveryLevel = 1
			const bound = 500 * time.Millisecond
			cfg.SNACKTimeout = bound
			start := time.Now()
			s, f, r := hostileAfterRead(t, faketarget.Login{Digests: true}, cfg, func(f *faketarget.Target, cmd *pdu.SCSICommand) []byte {
				b := f.Wire(&pdu.DataIn{Final: true, HasStatus: true, ITT: cmd.ITT, TTT: 0xffffffff, SeqNums: f.Seq(true)}, make([]byte, 512))
				tc.corrupt(b)
				return b
			})
			took := time.Since(start)
			if s.Params().ErrorRecoveryLevel != 1 {
				t.Fatalf("ErrorRecoveryLevel %d negotiated, want 1", s.Params().ErrorRecoveryLevel)
			}
			if !errors.Is(r.err, session.ErrRecoveryFailed) || !errors.Is(r.err, session.ErrOutcomeUnknown) {
				t.Fatalf("Execute: %v, want ErrRecoveryFailed and ErrOutcomeUnknown", r.err)
			}
			if took < bound || took > bound+wait {
				t.Errorf("Execute returned after %v, want the SNACK timeout %v (and well within %v more)", took, bound, wait)
			}
			f.Expect(tc.sent)
			dropped(t, s, f)
		})
	}
}

// A header digest that does not match → *pdu.DigestError; the command
// fails; connection dropped.
func TestFaultHeaderDigestMismatch(t *testing.T) {
	s, f, r := hostileAfterRead(t, faketarget.Login{Digests: true}, digestConfig(), func(f *faketarget.Target, cmd *pdu.SCSICommand) []byte {
		b := f.Wire(&pdu.DataIn{Final: true, HasStatus: true, ITT: cmd.ITT, TTT: 0xffffffff, SeqNums: f.Seq(true)}, make([]byte, 512))
		b[pdu.BHSLen] ^= 0x01 // the header digest
		return b
	})
	var de *pdu.DigestError
	if !errors.As(r.err, &de) || de.Data {
		t.Fatalf("Execute: %v (%T), want a header *pdu.DigestError", r.err, r.err)
	}
	dropped(t, s, f)
}

// A data digest that does not match → *pdu.DigestError (Data); the read
// fails; connection dropped.
func TestFaultDataDigestMismatch(t *testing.T) {
	s, f, r := hostileAfterRead(t, faketarget.Login{Digests: true}, digestConfig(), func(f *faketarget.Target, cmd *pdu.SCSICommand) []byte {
		b := f.Wire(&pdu.DataIn{Final: true, HasStatus: true, ITT: cmd.ITT, TTT: 0xffffffff, SeqNums: f.Seq(true)}, make([]byte, 512))
		b[pdu.BHSLen+4+100] ^= 0x80 // a data byte
		return b
	})
	var de *pdu.DigestError
	if !errors.As(r.err, &de) || !de.Data {
		t.Fatalf("Execute: %v (%T), want a data *pdu.DigestError", r.err, r.err)
	}
	dropped(t, s, f)
}

// StatSN going backwards → ignored: ExpStatSN does not move back; session
// kept.
func TestFaultStatSNBackwards(t *testing.T) {
	s, f := fakeSession(t, testConfig(), faketarget.Login{})
	ctx := context.Background()
	ch := goExecute(ctx, s, readCmd(512))
	x := f.Expect(pdu.OpSCSICommand)
	seq := f.Seq(true)
	f.MustSend(&pdu.DataIn{Final: true, HasStatus: true, ITT: x.PDU.(*pdu.SCSICommand).ITT, TTT: 0xffffffff, SeqNums: seq}, make([]byte, 512))
	waitExec(t, ch)
	ch = goExecute(ctx, s, readCmd(512))
	x = f.Expect(pdu.OpSCSICommand)
	back := f.Seq(false)
	back.StatSN = seq.StatSN - 100
	f.MustSend(&pdu.SCSIResponse{ITT: x.PDU.(*pdu.SCSICommand).ITT, SeqNums: back}, nil)
	if r := waitExec(t, ch); r.err != nil {
		t.Fatal(r.err)
	}
	ch = goExecute(ctx, s, readCmd(512))
	x = f.Expect(pdu.OpSCSICommand)
	if got := x.PDU.(*pdu.SCSICommand).ExpStatSN; got != seq.StatSN+1 {
		t.Errorf("ExpStatSN %#x after a StatSN going back, want %#x", got, seq.StatSN+1)
	}
	f.ReadData(x, make([]byte, 512))
	if r := waitExec(t, ch); r.err != nil {
		t.Fatal(r.err)
	}
	kept(t, s, f)
}

// MaxCmdSN below ExpCmdSN-1 → the update is ignored (RFC 7143 §4.2.2.1):
// commands still go out; session kept.
func TestFaultMaxCmdSNBelowExpCmdSN(t *testing.T) {
	s, f := fakeSession(t, testConfig(), faketarget.Login{Window: 4})
	sq := f.Seq(false)
	f.MustSend(&pdu.NOPIn{ITT: 0xffffffff, TTT: 0xffffffff, SeqNums: pdu.SeqNums{StatSN: sq.StatSN, ExpCmdSN: sq.ExpCmdSN, MaxCmdSN: sq.ExpCmdSN - 10}}, nil)
	f.Ping()
	// Four commands fit the window the target gave at login.
	var chs []<-chan execResult
	for i := 0; i < 4; i++ {
		chs = append(chs, goExecute(context.Background(), s, readCmd(512)))
	}
	for i := 0; i < 4; i++ {
		f.ReadData(f.Expect(pdu.OpSCSICommand), make([]byte, 512))
	}
	for _, ch := range chs {
		if r := waitExec(t, ch); r.err != nil {
			t.Fatal(r.err)
		}
	}
	kept(t, s, f)
}

// MaxCmdSN = ExpCmdSN-1 (window closed) → commands wait, without sending
// or spinning, and go out when a NOP-In opens the window; session kept.
func TestFaultWindowClosed(t *testing.T) {
	s, f := fakeSession(t, testConfig(), faketarget.Login{Window: 1})
	ch := goExecute(context.Background(), s, readCmd(512))
	x := f.Expect(pdu.OpSCSICommand)
	sn := x.PDU.(*pdu.SCSICommand).CmdSN
	f.Freeze()
	closed := pdu.SeqNums{StatSN: f.Seq(true).StatSN, ExpCmdSN: sn + 1, MaxCmdSN: sn}
	f.MustSend(&pdu.DataIn{Final: true, HasStatus: true, ITT: x.PDU.(*pdu.SCSICommand).ITT, TTT: 0xffffffff, SeqNums: closed}, make([]byte, 512))
	if r := waitExec(t, ch); r.err != nil {
		t.Fatal(r.err)
	}
	blocked := goExecute(context.Background(), s, readCmd(512))
	f.ExpectNothing()
	f.MustSend(&pdu.NOPIn{ITT: 0xffffffff, TTT: 0xffffffff, SeqNums: pdu.SeqNums{StatSN: closed.StatSN + 1, ExpCmdSN: sn + 1, MaxCmdSN: sn + 1}}, nil)
	x = f.Expect(pdu.OpSCSICommand)
	f.ReadData(x, make([]byte, 512))
	if r := waitExec(t, blocked); r.err != nil {
		t.Fatal(r.err)
	}
}

// An R2T for a range outside the write's buffer → *pdu.ProtocolError; the
// write fails (never reported done); connection dropped.
func TestFaultR2TOutsideBuffer(t *testing.T) {
	cfg := testConfig()
	p := session.DefaultParams()
	p.InitialR2T, p.ImmediateData = true, false
	cfg.Params = &p
	for _, tt := range []struct {
		name   string
		off, n uint32
		field  string
	}{
		{"offset past the end", 16384, 512, "BufferOffset"},
		{"range past the end", 8192, 16384, "DesiredDataTransferLength"},
		{"length wraps", 4096, 0xfffff000, "DesiredDataTransferLength"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, f := fakeSession(t, cfg, faketarget.Login{})
			ch := goExecute(context.Background(), s, writeCmd(pattern(16384, 1)))
			c := f.Expect(pdu.OpSCSICommand).PDU.(*pdu.SCSICommand)
			f.Send(&pdu.R2T{ITT: c.ITT, TTT: 1, SeqNums: f.Seq(false), BufferOffset: tt.off, DesiredDataTransferLength: tt.n}, nil)
			r := waitExec(t, ch)
			faketarget.AsProtocolError(t, r.err, pdu.OpR2T, tt.field)
			dropped(t, s, f)
		})
	}
}

// Data-In past the command's expected length → *pdu.ProtocolError
// (DataSegmentLength), nothing written past the buffer; connection dropped.
func TestFaultDataInPastExpectedLength(t *testing.T) {
	s, f := fakeSession(t, testConfig(), faketarget.Login{})
	buf := make([]byte, 1024)
	cmd := &session.Command{LUN: 1, CDB: testutil.RW16(0x88, 0, 512, 512), Read: buf[:512]}
	ch := goExecute(context.Background(), s, cmd)
	c := f.Expect(pdu.OpSCSICommand).PDU.(*pdu.SCSICommand)
	f.Send(&pdu.DataIn{Final: true, HasStatus: true, ITT: c.ITT, TTT: 0xffffffff, SeqNums: f.Seq(true)}, bytes.Repeat([]byte{0xee}, 1024))
	r := waitExec(t, ch)
	faketarget.AsProtocolError(t, r.err, pdu.OpSCSIDataIn, "DataSegmentLength")
	dropped(t, s, f)
	if bytes.ContainsRune(buf, 0xee) {
		t.Error("Data-In written into the buffer")
	}
}

// The target closes the connection in the middle of a Data-In → the read
// fails with session.ErrConnReset, saying its outcome is unknown; session
// ended.
func TestFaultCloseMidDataIn(t *testing.T) {
	s, f := fakeSession(t, testConfig(), faketarget.Login{})
	ch := goExecute(context.Background(), s, readCmd(8192))
	c := f.Expect(pdu.OpSCSICommand).PDU.(*pdu.SCSICommand)
	var h pdu.BHS
	(&pdu.DataIn{ITT: c.ITT, TTT: 0xffffffff, SeqNums: f.Seq(false)}).MarshalBHS(&h)
	h.SetLengths(0, 8192)
	f.SendRaw(append(h[:], make([]byte, 4096)...))
	f.Close()
	r := waitExec(t, ch)
	if !errors.Is(r.err, session.ErrConnReset) || !strings.Contains(r.err.Error(), "unknown") {
		t.Fatalf("Execute: %v (%T), want session.ErrConnReset, outcome unknown", r.err, r.err)
	}
	waitEnded(t, s)
}

// The target never answers the initiator's NOP-Out (its NOP-In never comes)
// → the connection is declared dead (session.ErrDeadPeer) within
// NOPInterval+NOPTimeout and dropped; a command waiting on it fails.
func TestFaultNOPInNeverAnswered(t *testing.T) {
	tg := iscsitest.NewTarget(iscsitest.Config{Hook: iscsitest.When(iscsitest.OpcodeIs(pdu.OpNOPOut), iscsitest.Drop),
		Logger: nil})
	defer tg.Close()
	cfg := testConfig()
	cfg.TargetName, cfg.Portal, cfg.Dial = iscsitest.DefaultName, tg.Addr(), nil
	cfg.NOPInterval, cfg.NOPTimeout = 50*time.Millisecond, 200*time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	s, err := session.Login(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := s.Conns()[0]
	start := time.Now()
	waitEnded(t, s)
	if !errors.Is(c.Err(), session.ErrDeadPeer) {
		t.Fatalf("Conn.Err %v, want session.ErrDeadPeer", c.Err())
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("dead peer found after %v", d)
	}
	if _, err := s.Execute(ctx, readCmd(512)); err == nil {
		t.Error("Execute on a dead session succeeded")
	}
}

// A Reject of a SCSI command → *session.RejectError for that command alone;
// session kept.
func TestFaultRejectOfCommand(t *testing.T) {
	s, f := fakeSession(t, testConfig(), faketarget.Login{})
	ch := goExecute(context.Background(), s, readCmd(512))
	x := f.Expect(pdu.OpSCSICommand)
	f.MustSend(&pdu.Reject{Reason: pdu.RejectInvalidPDUField, ITT: 0xffffffff, SeqNums: f.Seq(true)}, x.BHS[:])
	r := waitExec(t, ch)
	var rj *session.RejectError
	if !errors.As(r.err, &rj) || rj.Reason != pdu.RejectInvalidPDUField || rj.Op != pdu.OpSCSICommand {
		t.Fatalf("Execute: %v, want a RejectError for the SCSI Command", r.err)
	}
	kept(t, s, f)
}

// A SCSI Response for a tag no command has → ignored; the command still
// waits for its own status; session kept.
func TestFaultResponseUnknownITT(t *testing.T) {
	s, f := fakeSession(t, testConfig(), faketarget.Login{})
	ch := goExecute(context.Background(), s, readCmd(512))
	x := f.Expect(pdu.OpSCSICommand)
	f.MustSend(&pdu.SCSIResponse{ITT: x.PDU.(*pdu.SCSICommand).ITT ^ 0x5555, Status: pdu.StatusCheckCondition, SeqNums: f.Seq(true)}, nil)
	f.Ping()
	select {
	case r := <-ch:
		t.Fatalf("Execute returned on another tag's response: %v", r.err)
	default:
	}
	f.ReadData(x, make([]byte, 512))
	if r := waitExec(t, ch); r.err != nil {
		t.Fatal(r.err)
	}
	kept(t, s, f)
}

// CHECK CONDITION with a 1-byte sense segment (OpenBSD's bug) →
// *session.SCSIError with no sense key; session kept.
func TestFaultCheckConditionShortSense(t *testing.T) {
	s, f := fakeSession(t, testConfig(), faketarget.Login{})
	ch := goExecute(context.Background(), s, readCmd(512))
	x := f.Expect(pdu.OpSCSICommand)
	f.MustSend(&pdu.SCSIResponse{ITT: x.PDU.(*pdu.SCSICommand).ITT, Status: pdu.StatusCheckCondition, SeqNums: f.Seq(true)}, []byte{0x70})
	r := waitExec(t, ch)
	var se *session.SCSIError
	if !errors.As(r.err, &se) || se.Status != pdu.StatusCheckCondition || se.SenseKey() != -1 {
		t.Fatalf("Execute: %v, want a SCSIError without sense", r.err)
	}
	kept(t, s, f)
}
