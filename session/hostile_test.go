package session

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/faketarget"
	"github.com/goiscsi/iscsi/pdu"
)

func TestReadAndWrite(t *testing.T) {
	s, f := fakeSession(t, testConfig(), faketarget.Login{})
	ctx := context.Background()

	ch := goExecute(ctx, s, readCmd(1024))
	x := f.Expect(pdu.OpSCSICommand)
	c := x.PDU.(*pdu.SCSICommand)
	if !c.Read || c.Write || !c.Final || c.ExpectedDataTransferLength != 1024 || c.LUN != pdu.MakeLUN(1) || c.Attr != pdu.AttrSimple || x.BHS.Immediate() {
		t.Errorf("READ command %+v", c)
	}
	want := pattern(1024, 1)
	f.MustSend(&pdu.DataIn{ITT: c.ITT, TTT: 0xffffffff, SeqNums: f.Seq(false), DataSN: 0}, want[:512])
	f.MustSend(&pdu.DataIn{Final: true, HasStatus: true, ITT: c.ITT, TTT: 0xffffffff, SeqNums: f.Seq(true), DataSN: 1, BufferOffset: 512}, want[512:])
	r := waitExec(t, ch)
	if r.err != nil || r.res.N != 1024 {
		t.Fatalf("read: %+v %v", r.res, r.err)
	}

	// A short read reports its residual.
	cmd := readCmd(1024)
	ch = goExecute(ctx, s, cmd)
	c = f.Expect(pdu.OpSCSICommand).PDU.(*pdu.SCSICommand)
	f.MustSend(&pdu.DataIn{Final: true, HasStatus: true, Underflow: true, ResidualCount: 512, ITT: c.ITT, TTT: 0xffffffff, SeqNums: f.Seq(true)}, want[:512])
	if r := waitExec(t, ch); r.err != nil || r.res.N != 512 || !r.res.Underflow || !bytes.Equal(cmd.Read[:512], want[:512]) {
		t.Fatalf("short read: %+v %v", r.res, r.err)
	}

	// CHECK CONDITION with sense.
	ch = goExecute(ctx, s, readCmd(512))
	c = f.Expect(pdu.OpSCSICommand).PDU.(*pdu.SCSICommand)
	sense := []byte{0, 18, 0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0x00, 0, 0, 0, 0}
	f.MustSend(&pdu.SCSIResponse{ITT: c.ITT, Status: pdu.StatusCheckCondition, SeqNums: f.Seq(true)}, sense)
	r = waitExec(t, ch)
	var se *SCSIError
	if !errors.As(r.err, &se) || se.SenseKey() != 5 || r.res == nil || r.res.Status != pdu.StatusCheckCondition {
		t.Fatalf("CHECK CONDITION: %+v %v", r.res, r.err)
	}
	if asc, _, _ := se.ASC(); asc != 0x21 {
		t.Errorf("ASC %#x", asc)
	}

	// A write within the immediate data limit goes in one PDU.
	data := pattern(4096, 9)
	ch = goExecute(ctx, s, writeCmd(data))
	x = f.Expect(pdu.OpSCSICommand)
	c = x.PDU.(*pdu.SCSICommand)
	if !c.Write || c.Read || !c.Final || c.ExpectedDataTransferLength != 4096 || !bytes.Equal(x.Data, data) {
		t.Errorf("WRITE command %+v with %d bytes", c, len(x.Data))
	}
	f.Good(x)
	if r := waitExec(t, ch); r.err != nil || r.res.N != 4096 {
		t.Fatalf("write: %+v %v", r.res, r.err)
	}
}

// A write larger than the first burst: immediate data, unsolicited Data-Out
// up to FirstBurstLength, then Data-Out for each R2T, every PDU within the
// target's MaxRecvDataSegmentLength.
func TestWriteR2TSequence(t *testing.T) {
	cfg := testConfig()
	p := DefaultParams()
	p.FirstBurstLength, p.MaxBurstLength = 8192, 8192
	cfg.Params = &p
	s, f := fakeSession(t, cfg, faketarget.Login{TargetMRDSL: 4096})
	data := pattern(20000, 3)
	ch := goExecute(context.Background(), s, writeCmd(data))
	got := make([]byte, len(data))

	x := f.Expect(pdu.OpSCSICommand)
	c := x.PDU.(*pdu.SCSICommand)
	if c.Final || len(x.Data) != 4096 {
		t.Fatalf("command F=%v with %d bytes of immediate data", c.Final, len(x.Data))
	}
	copy(got, x.Data)
	type dout struct {
		off, n int
		sn     uint32
		final  bool
		ttt    uint32
	}
	check := func(want dout) {
		t.Helper()
		x := f.Expect(pdu.OpSCSIDataOut)
		d := x.PDU.(*pdu.DataOut)
		g := dout{int(d.BufferOffset), len(x.Data), d.DataSN, d.Final, d.TTT}
		if g != want || d.ITT != c.ITT || d.LUN != c.LUN {
			t.Fatalf("Data-Out %+v ITT %#x, want %+v ITT %#x", g, d.ITT, want, c.ITT)
		}
		copy(got[d.BufferOffset:], x.Data)
	}
	check(dout{4096, 4096, 0, true, 0xffffffff}) // unsolicited, to FirstBurstLength
	f.MustSend(&pdu.R2T{ITT: c.ITT, TTT: 7, SeqNums: f.Seq(false), R2TSN: 0, BufferOffset: 8192, DesiredDataTransferLength: 8192}, nil)
	check(dout{8192, 4096, 0, false, 7})
	check(dout{12288, 4096, 1, true, 7})
	f.MustSend(&pdu.R2T{ITT: c.ITT, TTT: 8, SeqNums: f.Seq(false), R2TSN: 1, BufferOffset: 16384, DesiredDataTransferLength: 3616}, nil)
	check(dout{16384, 3616, 0, true, 8})
	f.Good(x)
	if r := waitExec(t, ch); r.err != nil {
		t.Fatal(r.err)
	}
	if !bytes.Equal(got, data) {
		t.Error("the target did not get the data written")
	}
}

func TestDataInHostile(t *testing.T) {
	type din struct {
		off   uint32
		n     int
		sn    uint32
		final bool
	}
	tests := []struct {
		name  string
		pdus  []din
		field string
	}{
		{"one PDU past the expected length", []din{{0, 1024, 0, true}}, "DataSegmentLength"},
		{"second PDU past the end", []din{{0, 256, 0, false}, {256, 512, 1, true}}, "DataSegmentLength"},
		{"offset skips ahead", []din{{0, 256, 0, false}, {384, 128, 1, true}}, "BufferOffset"},
		{"offset goes back", []din{{0, 256, 0, false}, {0, 256, 1, true}}, "BufferOffset"},
		{"DataSN skips", []din{{0, 256, 0, false}, {256, 256, 2, true}}, "DataSN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// ERL 0: every one is a protocol error. (At ERL 1 a DataSN
			// that skips is a lost Data-In, asked for again:
			// TestDataInSkipAtERL1.)
			cfg := testConfig()
			p := DefaultParams()
			p.ErrorRecoveryLevel = 0
			cfg.Params = &p
			s, f := fakeSession(t, cfg, faketarget.Login{})
			cmd := readCmd(512)
			ch := goExecute(context.Background(), s, cmd)
			c := f.Expect(pdu.OpSCSICommand).PDU.(*pdu.SCSICommand)
			for _, d := range tt.pdus {
				f.Send(&pdu.DataIn{Final: d.final, HasStatus: d.final, ITT: c.ITT, TTT: 0xffffffff, SeqNums: f.Seq(d.final),
					DataSN: d.sn, BufferOffset: d.off}, bytes.Repeat([]byte{0xee}, d.n))
			}
			r := waitExec(t, ch)
			faketarget.AsProtocolError(t, r.err, pdu.OpSCSIDataIn, tt.field)
			f.ExpectClosed()
			<-s.Ended()
			faketarget.AsProtocolError(t, s.all[0].Err(), pdu.OpSCSIDataIn, tt.field)
		})
	}
}

// TestDataInSkipAtERL1: at ERL 1 a DataSN that skips is a Data-In lost,
// not a protocol error: the initiator asks for it with a Data SNACK from
// the missing DataSN, and completes the read with what the target sends
// again.
func TestDataInSkipAtERL1(t *testing.T) {
	cfg := testConfig()
	p := DefaultParams()
	p.ErrorRecoveryLevel = 1
	cfg.Params = &p
	s, f := fakeSession(t, cfg, faketarget.Login{})
	if s.Params().ErrorRecoveryLevel != 1 {
		t.Fatalf("ErrorRecoveryLevel %d, want 1", s.Params().ErrorRecoveryLevel)
	}
	cmd := readCmd(512)
	ch := goExecute(context.Background(), s, cmd)
	c := f.Expect(pdu.OpSCSICommand).PDU.(*pdu.SCSICommand)
	first, second := bytes.Repeat([]byte{0x11}, 256), bytes.Repeat([]byte{0x22}, 256)
	f.Send(&pdu.DataIn{ITT: c.ITT, TTT: 0xffffffff, SeqNums: f.Seq(false), DataSN: 0}, first)
	f.Send(&pdu.DataIn{Final: true, HasStatus: true, ITT: c.ITT, TTT: 0xffffffff, SeqNums: f.Seq(true), DataSN: 2, BufferOffset: 256}, second)
	sn := f.Expect(pdu.OpSNACKRequest).PDU.(*pdu.SNACKRequest)
	if sn.Type != pdu.SNACKData || sn.ITT != c.ITT || sn.BegRun != 1 || sn.RunLength != 0 {
		t.Fatalf("SNACK %+v, want a Data SNACK for ITT %#x from DataSN 1", sn, c.ITT)
	}
	f.Send(&pdu.DataIn{ITT: c.ITT, TTT: 0xffffffff, SeqNums: f.Seq(false), DataSN: 1, BufferOffset: 256}, second[:128])
	f.Send(&pdu.DataIn{Final: true, HasStatus: true, ITT: c.ITT, TTT: 0xffffffff, SeqNums: f.Seq(true), DataSN: 2, BufferOffset: 384}, second[:128])
	if r := waitExec(t, ch); r.err != nil {
		t.Fatalf("read after the SNACK: %v", r.err)
	}
	if !bytes.Equal(cmd.Read, append(append([]byte(nil), first...), second...)) {
		t.Fatal("the read's data are not what the target sent")
	}
}

func TestR2THostile(t *testing.T) {
	tests := []struct {
		name    string
		read    bool
		off, n  uint32
		field   string
		contain string
	}{
		{"offset past the buffer", false, 16384, 512, "BufferOffset", "outside"},
		{"range past the buffer", false, 8192, 16384, "DesiredDataTransferLength", "outside"},
		{"length wraps 32 bits", false, 4096, 0xfffff000, "DesiredDataTransferLength", "outside"},
		{"zero length", false, 0, 0, "DesiredDataTransferLength", "outside"},
		{"over MaxBurstLength", false, 0, 8192, "DesiredDataTransferLength", "MaxBurstLength"},
		{"R2T for a read", true, 0, 512, "InitiatorTaskTag", "writes nothing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			p := DefaultParams()
			p.InitialR2T, p.ImmediateData, p.MaxBurstLength, p.FirstBurstLength = true, false, 4096, 4096
			cfg.Params = &p
			s, f := fakeSession(t, cfg, faketarget.Login{})
			cmd := writeCmd(pattern(16384, 0))
			if tt.read {
				cmd = readCmd(16384)
			}
			ch := goExecute(context.Background(), s, cmd)
			x := f.Expect(pdu.OpSCSICommand)
			if len(x.Data) != 0 {
				t.Fatalf("immediate data with ImmediateData=No")
			}
			c := x.PDU.(*pdu.SCSICommand)
			f.Send(&pdu.R2T{ITT: c.ITT, TTT: 1, SeqNums: f.Seq(false), BufferOffset: tt.off, DesiredDataTransferLength: tt.n}, nil)
			r := waitExec(t, ch)
			pe := faketarget.AsProtocolError(t, r.err, pdu.OpR2T, tt.field)
			if !strings.Contains(pe.Reason, tt.contain) {
				t.Errorf("reason %q", pe.Reason)
			}
			f.ExpectClosed()
		})
	}
}

func TestLogoutResponseUnknownITT(t *testing.T) {
	s, f := fakeSession(t, testConfig(), faketarget.Login{})
	c := s.Conns()[0]
	ch := make(chan LogoutResult, 1)
	go func() {
		ch <- c.Logout(context.Background(), LogoutOptions{Reason: pdu.LogoutCloseSession, Timeout: wait})
	}()
	x := f.Expect(pdu.OpLogoutRequest)
	lr := x.PDU.(*pdu.LogoutRequest)
	if !lr.Immediate || lr.ReasonCode != pdu.LogoutCloseSession || lr.CID != 0 {
		t.Errorf("Logout Request %+v", lr)
	}
	f.Send(&pdu.LogoutResponse{ITT: lr.ITT + 1, SeqNums: f.Seq(true)}, nil)
	res := <-ch
	faketarget.AsProtocolError(t, res.Err, pdu.OpLogoutResponse, "InitiatorTaskTag")
	if res.Responded || res.OK() {
		t.Errorf("result %+v", res)
	}
	f.ExpectClosed()
	if s.LoggedOut() {
		t.Error("session says it logged out")
	}
}

func TestRejectOfCommand(t *testing.T) {
	s, f := fakeSession(t, testConfig(), faketarget.Login{})
	ctx := context.Background()
	ch := goExecute(ctx, s, readCmd(512))
	x := f.Expect(pdu.OpSCSICommand)
	f.MustSend(&pdu.Reject{Reason: pdu.RejectInvalidPDUField, ITT: 0xffffffff, SeqNums: f.Seq(true)}, x.BHS[:])
	r := waitExec(t, ch)
	var rj *RejectError
	if !errors.As(r.err, &rj) || rj.Reason != pdu.RejectInvalidPDUField || rj.Op != pdu.OpSCSICommand {
		t.Fatalf("Execute: %v, want a RejectError for the SCSI Command", r.err)
	}
	// The connection goes on.
	ch = goExecute(ctx, s, readCmd(512))
	f.ReadData(f.Expect(pdu.OpSCSICommand), make([]byte, 512))
	if r := waitExec(t, ch); r.err != nil {
		t.Fatalf("after the Reject: %v", r.err)
	}

	// A Reject without the rejected header is a protocol error.
	ch = goExecute(ctx, s, readCmd(512))
	f.Expect(pdu.OpSCSICommand)
	f.Send(&pdu.Reject{Reason: pdu.RejectProtocolError, ITT: 0xffffffff, SeqNums: f.Seq(true)}, make([]byte, 20))
	faketarget.AsProtocolError(t, waitExec(t, ch).err, pdu.OpReject, "DataSegmentLength")
}

func TestStatSNGoingBackwards(t *testing.T) {
	s, f := fakeSession(t, testConfig(), faketarget.Login{})
	ctx := context.Background()
	ch := goExecute(ctx, s, readCmd(512))
	x := f.Expect(pdu.OpSCSICommand)
	seq := f.Seq(true)
	f.MustSend(&pdu.DataIn{Final: true, HasStatus: true, ITT: x.PDU.(*pdu.SCSICommand).ITT, TTT: 0xffffffff, SeqNums: seq}, make([]byte, 512))
	waitExec(t, ch)

	ch = goExecute(ctx, s, readCmd(512))
	x = f.Expect(pdu.OpSCSICommand)
	if got := x.PDU.(*pdu.SCSICommand).ExpStatSN; got != seq.StatSN+1 {
		t.Fatalf("ExpStatSN %#x, want %#x", got, seq.StatSN+1)
	}
	back := f.Seq(false)
	back.StatSN = seq.StatSN - 5
	f.MustSend(&pdu.SCSIResponse{ITT: x.PDU.(*pdu.SCSICommand).ITT, SeqNums: back}, nil)
	if r := waitExec(t, ch); r.err != nil {
		t.Fatal(r.err)
	}
	ch = goExecute(ctx, s, readCmd(512))
	x = f.Expect(pdu.OpSCSICommand)
	if got := x.PDU.(*pdu.SCSICommand).ExpStatSN; got != seq.StatSN+1 {
		t.Errorf("ExpStatSN %#x after a StatSN going back, want %#x", got, seq.StatSN+1)
	}
	f.Good(x)
	waitExec(t, ch)
}

// A target closes the window (MaxCmdSN = ExpCmdSN-1): Execute blocks, sends
// nothing, and goes on when a NOP-In opens the window again.
func TestWindowClosedThenOpened(t *testing.T) {
	s, f := fakeSession(t, testConfig(), faketarget.Login{Window: 1})
	ctx := context.Background()
	ch := goExecute(ctx, s, readCmd(512))
	x := f.Expect(pdu.OpSCSICommand)
	sn := x.PDU.(*pdu.SCSICommand).CmdSN
	f.Freeze()
	closed := pdu.SeqNums{StatSN: f.Seq(true).StatSN, ExpCmdSN: sn + 1, MaxCmdSN: sn}
	f.MustSend(&pdu.DataIn{Final: true, HasStatus: true, ITT: x.PDU.(*pdu.SCSICommand).ITT, TTT: 0xffffffff, SeqNums: closed}, make([]byte, 512))
	if r := waitExec(t, ch); r.err != nil {
		t.Fatal(r.err)
	}

	blocked := goExecute(ctx, s, readCmd(512))
	cctx, cancel := context.WithCancel(ctx)
	abandoned := goExecute(cctx, s, readCmd(512))
	f.ExpectNothing()
	cancel()
	r := waitExec(t, abandoned)
	if !errors.Is(r.err, context.Canceled) || !strings.Contains(r.err.Error(), "not sent") {
		t.Fatalf("Execute canceled while the window was closed: %v", r.err)
	}
	select {
	case r := <-blocked:
		t.Fatalf("Execute returned with the window closed: %v", r.err)
	default:
	}

	f.MustSend(&pdu.NOPIn{ITT: 0xffffffff, TTT: 0xffffffff, SeqNums: pdu.SeqNums{StatSN: closed.StatSN + 1, ExpCmdSN: sn + 1, MaxCmdSN: sn + 1}}, nil)
	x = f.Expect(pdu.OpSCSICommand)
	if got := x.PDU.(*pdu.SCSICommand).CmdSN; got != sn+1 {
		t.Errorf("CmdSN %#x, want %#x", got, sn+1)
	}
	f.ReadData(x, make([]byte, 512))
	if r := waitExec(t, blocked); r.err != nil {
		t.Fatal(r.err)
	}
	// The canceled command never went out, and nothing asks to abort it.
	f.ExpectNothing()
}

func TestNOPInPingAnswered(t *testing.T) {
	s, f := fakeSession(t, testConfig(), faketarget.Login{})
	payload := []byte("are you there?")
	seq := f.Seq(false)
	f.MustSend(&pdu.NOPIn{ITT: 0xffffffff, TTT: 0xabcd, LUN: pdu.MakeLUN(3), SeqNums: seq}, payload)
	x := f.Expect(pdu.OpNOPOut)
	n := x.PDU.(*pdu.NOPOut)
	if n.ITT != 0xffffffff || n.TTT != 0xabcd || n.LUN != pdu.MakeLUN(3) || !n.Immediate || !bytes.Equal(x.Data, payload) {
		t.Errorf("NOP-Out %+v data %q", n, x.Data)
	}
	if n.CmdSN != s.currentCmdSN() || n.ExpStatSN != seq.StatSN {
		// A ping's StatSN is the next one, not a new status.
		t.Errorf("NOP-Out CmdSN %#x ExpStatSN %#x, want %#x %#x", n.CmdSN, n.ExpStatSN, s.currentCmdSN(), seq.StatSN)
	}
}

func TestDeadPeer(t *testing.T) {
	cfg := testConfig()
	cfg.NOPInterval, cfg.NOPTimeout = 40*time.Millisecond, 120*time.Millisecond
	s, f := fakeSession(t, cfg, faketarget.Login{})
	c := s.Conns()[0]
	ch := goExecute(context.Background(), s, readCmd(512))
	f.Expect(pdu.OpSCSICommand)
	x := f.Expect(pdu.OpNOPOut) // never answered
	if n := x.PDU.(*pdu.NOPOut); n.ITT == 0xffffffff || n.TTT != 0xffffffff || !n.Immediate {
		t.Errorf("keepalive NOP-Out %+v", n)
	}
	r := waitExec(t, ch)
	if !errors.Is(r.err, ErrDeadPeer) || !strings.Contains(r.err.Error(), "outcome on the target is unknown") {
		t.Fatalf("Execute: %v, want ErrDeadPeer", r.err)
	}
	if !errors.Is(c.Err(), ErrDeadPeer) {
		t.Errorf("Conn.Err %v", c.Err())
	}
	f.ExpectClosed()
	select {
	case <-s.Ended():
	case <-time.After(wait):
		t.Fatal("session did not end")
	}
}

// A target that answers every NOP-Out is never declared dead, even when
// its answers take a good part of NOPTimeout. (The margins leave room for a
// loaded machine: the ticker and this goroutine may both run late.)
func TestKeepaliveAnswered(t *testing.T) {
	cfg := testConfig()
	cfg.NOPInterval, cfg.NOPTimeout = 50*time.Millisecond, time.Second
	s, f := fakeSession(t, cfg, faketarget.Login{})
	c := s.Conns()[0]
	for i := 0; i < 3; i++ {
		x := f.Expect(pdu.OpNOPOut)
		n := x.PDU.(*pdu.NOPOut)
		time.Sleep(300 * time.Millisecond) // a slow target, well within NOPTimeout
		f.MustSend(&pdu.NOPIn{ITT: n.ITT, TTT: 0xffffffff, SeqNums: f.Seq(true)}, nil)
	}
	if !c.Active() || c.Err() != nil {
		t.Fatalf("connection after answered NOPs: active %v, err %v", c.Active(), c.Err())
	}
}

func TestAsyncLogoutRequest(t *testing.T) {
	events := make(chan AsyncEvent, 8)
	cfg := testConfig()
	cfg.OnAsync = func(c *Conn, ev AsyncEvent) bool {
		events <- ev
		return false
	}
	s, f := fakeSession(t, cfg, faketarget.Login{})
	c := s.Conns()[0]
	ev := &pdu.AsyncMessage{ITT: 0xffffffff, AsyncEvent: pdu.AsyncLogoutRequest, Parameter3: 0}
	ev.SeqNums = f.Seq(true)
	f.MustSend(ev, nil)
	ev.SeqNums = f.Seq(true)
	f.MustSend(ev, nil) // the target asks again: still one logout
	x := f.Expect(pdu.OpLogoutRequest)
	if lr := x.PDU.(*pdu.LogoutRequest); lr.ReasonCode != pdu.LogoutCloseSession || !lr.Immediate {
		t.Errorf("Logout Request %+v", lr)
	}
	if !c.LogoutRequested() {
		t.Error("LogoutRequested false")
	}
	f.AnswerLogout(x, pdu.LogoutSuccess)
	f.ExpectClosed() // no second Logout Request
	select {
	case <-s.Ended():
	case <-time.After(wait):
		t.Fatal("session did not end")
	}
	if got := <-events; got.Event != pdu.AsyncLogoutRequest {
		t.Errorf("OnAsync got %+v", got)
	}
	// A user's Logout now reports the logout the session made.
	res, err := s.Logout(context.Background(), LogoutOptions{})
	if err != nil || !res.OK() || !s.LoggedOut() {
		t.Errorf("Logout after the target's logout: %+v %v", res, err)
	}
	if _, err := s.Execute(context.Background(), readCmd(512)); !errors.Is(err, ErrNotSent) {
		t.Errorf("Execute after logout: %v, want ErrNotSent", err)
	}
}

// The target asks for a logout while the user's logout runs: one Logout
// Request, and both see its result.
func TestAsyncLogoutDuringLogout(t *testing.T) {
	s, f := fakeSession(t, testConfig(), faketarget.Login{})
	ch := make(chan error, 1)
	go func() {
		_, err := s.Logout(context.Background(), LogoutOptions{Timeout: wait})
		ch <- err
	}()
	x := f.Expect(pdu.OpLogoutRequest)
	f.MustSend(&pdu.AsyncMessage{ITT: 0xffffffff, AsyncEvent: pdu.AsyncLogoutRequest, SeqNums: f.Seq(true)}, nil)
	f.Ping()
	f.AnswerLogout(x, pdu.LogoutSuccess)
	f.ExpectClosed()
	if err := <-ch; err != nil {
		t.Fatal(err)
	}
}

func TestAsyncConnectionDrop(t *testing.T) {
	events := make(chan AsyncEvent, 8)
	cfg := testConfig()
	cfg.OnAsync = func(c *Conn, ev AsyncEvent) bool {
		events <- ev
		return false
	}
	for _, tt := range []struct {
		name  string
		event pdu.AsyncEvent
		cid   uint16
		drops bool
	}{
		{"event 2 for our CID", pdu.AsyncConnectionDrop, 0, true},
		{"event 2 for an unknown CID", pdu.AsyncConnectionDrop, 7, false},
		{"event 3", pdu.AsyncSessionDrop, 0, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, f := fakeSession(t, cfg, faketarget.Login{})
			c := s.Conns()[0]
			ch := goExecute(context.Background(), s, readCmd(512))
			x := f.Expect(pdu.OpSCSICommand)
			f.MustSend(&pdu.AsyncMessage{ITT: 0xffffffff, AsyncEvent: tt.event, Parameter1: tt.cid, Parameter2: 2, Parameter3: 20, SeqNums: f.Seq(true)}, nil)
			ev := <-events
			if ev.Event != tt.event || ev.Parameter1 != tt.cid || ev.Parameter2 != 2 || ev.Parameter3 != 20 {
				t.Errorf("OnAsync %+v", ev)
			}
			if !tt.drops {
				f.Ping()
				f.ReadData(x, make([]byte, 512))
				if r := waitExec(t, ch); r.err != nil || !c.Active() {
					t.Fatalf("after an event for another CID: %v", r.err)
				}
				return
			}
			r := waitExec(t, ch)
			if !errors.Is(r.err, ErrTargetDropped) || !errors.Is(r.err, ErrConnReset) {
				t.Fatalf("Execute: %v, want ErrTargetDropped", r.err)
			}
			f.ExpectClosed()
			<-s.Ended()
		})
	}
}

// A SCSI async event (0) with sense data reaches OnAsync.
func TestAsyncSCSIEvent(t *testing.T) {
	events := make(chan AsyncEvent, 1)
	cfg := testConfig()
	cfg.OnAsync = func(c *Conn, ev AsyncEvent) bool { events <- ev; return false }
	_, f := fakeSession(t, cfg, faketarget.Login{})
	f.MustSend(&pdu.AsyncMessage{ITT: 0xffffffff, AsyncEvent: pdu.AsyncSCSIEvent, LUN: pdu.MakeLUN(2), SeqNums: f.Seq(true)},
		[]byte{0, 3, 0x70, 0, 0x06, 0xff})
	ev := <-events
	if ev.LUN != uint64(pdu.MakeLUN(2)) || !bytes.Equal(ev.SenseData, []byte{0x70, 0, 0x06}) {
		t.Errorf("event %+v", ev)
	}
}

// A context canceled while Data-In arrives: Execute returns, ABORT TASK goes
// out for the command, and later Data-In no longer lands in the buffer.
func TestCancelMidCommand(t *testing.T) {
	s, f := fakeSession(t, testConfig(), faketarget.Login{})
	ctx, cancel := context.WithCancel(context.Background())
	cmd := readCmd(64 << 10)
	ch := goExecute(ctx, s, cmd)
	x := f.Expect(pdu.OpSCSICommand)
	c := x.PDU.(*pdu.SCSICommand)
	f.MustSend(&pdu.DataIn{ITT: c.ITT, TTT: 0xffffffff, SeqNums: f.Seq(false), DataSN: 0}, bytes.Repeat([]byte{0x11}, 8192))
	f.Ping() // the first Data-In is in the buffer
	if cmd.Read[0] != 0x11 || cmd.Read[8191] != 0x11 {
		t.Fatal("first Data-In not copied")
	}
	cancel()
	r := waitExec(t, ch)
	if !errors.Is(r.err, context.Canceled) || !strings.Contains(r.err.Error(), "unknown") {
		t.Fatalf("Execute: %v", r.err)
	}
	// The buffer is the caller's again: writing it races with nothing.
	for i := range cmd.Read {
		cmd.Read[i] = 0x55
	}
	tm := f.Expect(pdu.OpTaskMgmtRequest)
	req := tm.PDU.(*pdu.TaskMgmtRequest)
	if req.Function != pdu.TMFAbortTask || req.RefTaskTag != c.ITT || req.RefCmdSN != c.CmdSN || req.LUN != c.LUN || !req.Immediate {
		t.Errorf("abort %+v for command ITT %#x CmdSN %#x", req, c.ITT, c.CmdSN)
	}
	f.MustSend(&pdu.DataIn{ITT: c.ITT, TTT: 0xffffffff, SeqNums: f.Seq(false), DataSN: 1, BufferOffset: 8192}, bytes.Repeat([]byte{0xaa}, 8192))
	f.MustSend(&pdu.TaskMgmtResponse{ITT: req.ITT, Response: pdu.TMFComplete, SeqNums: f.Seq(true)}, nil)
	f.Ping()
	if i := bytes.IndexFunc(cmd.Read, func(r rune) bool { return r != 0x55 }); i >= 0 {
		t.Fatalf("buffer written at %d after Execute returned", i)
	}
	// The connection is still good.
	ch = goExecute(context.Background(), s, readCmd(512))
	f.ReadData(f.Expect(pdu.OpSCSICommand), make([]byte, 512))
	if r := waitExec(t, ch); r.err != nil {
		t.Fatal(r.err)
	}
}

// Every request of one SendTargets exchange carries the same tag, and a
// continuation carries the target's TTT.
func TestSendTargetsContinuation(t *testing.T) {
	cfg := testConfig()
	cfg.TargetName = ""
	s, f := fakeSession(t, cfg, faketarget.Login{})
	type result struct {
		ts  []DiscoveredTarget
		err error
	}
	ch := make(chan result, 1)
	go func() {
		ts, err := s.SendTargets(context.Background(), "All")
		ch <- result{ts, err}
	}()
	x := f.Expect(pdu.OpTextRequest)
	tr := x.PDU.(*pdu.TextRequest)
	if string(x.Data) != "SendTargets=All\x00" || tr.TTT != 0xffffffff || !tr.Final {
		t.Fatalf("Text Request %+v %q", tr, x.Data)
	}
	text := "TargetName=iqn.2026-01.test:a\x00TargetAddress=10.0.0.1:3260,1\x00TargetAddress=[fe80::1]:3260,2\x00TargetName=iqn.2026-01.test:b\x00TargetAddress=10.0.0.2:3260,1\x00"
	cut := 40
	f.MustSend(&pdu.TextResponse{Continue: true, ITT: tr.ITT, TTT: 0x99, SeqNums: f.Seq(true)}, []byte(text[:cut]))
	x = f.Expect(pdu.OpTextRequest)
	tr2 := x.PDU.(*pdu.TextRequest)
	if tr2.ITT != tr.ITT || tr2.TTT != 0x99 || len(x.Data) != 0 {
		t.Fatalf("continuation %+v %q, want ITT %#x TTT 0x99", tr2, x.Data, tr.ITT)
	}
	f.MustSend(&pdu.TextResponse{Final: true, ITT: tr.ITT, TTT: 0xffffffff, SeqNums: f.Seq(true)}, []byte(text[cut:]))
	r := <-ch
	if r.err != nil || len(r.ts) != 2 || r.ts[0].Name != "iqn.2026-01.test:a" || len(r.ts[0].Portals) != 2 || r.ts[1].Addresses()[0] != "10.0.0.2:3260" {
		t.Fatalf("SendTargets: %+v %v", r.ts, r.err)
	}
}

func TestConcurrentLogoutsShareOne(t *testing.T) {
	s, f := fakeSession(t, testConfig(), faketarget.Login{})
	c := s.Conns()[0]
	results := make(chan LogoutResult, 3)
	for i := 0; i < 3; i++ {
		go func() { results <- c.Logout(context.Background(), LogoutOptions{Timeout: wait}) }()
	}
	x := f.Expect(pdu.OpLogoutRequest)
	f.AnswerLogout(x, pdu.LogoutSuccess)
	f.ExpectClosed()
	for i := 0; i < 3; i++ {
		if r := <-results; !r.OK() || r.CID != 0 {
			t.Errorf("result %d: %+v", i, r)
		}
	}
}

func TestLogoutRefusedAndTimeout(t *testing.T) {
	t.Run("cleanup failed", func(t *testing.T) {
		s, f := fakeSession(t, testConfig(), faketarget.Login{})
		ch := make(chan LogoutResult, 1)
		go func() {
			ch <- s.Conns()[0].Logout(context.Background(), LogoutOptions{Reason: pdu.LogoutCloseSession, Timeout: wait})
		}()
		x := f.Expect(pdu.OpLogoutRequest)
		f.MustSend(&pdu.LogoutResponse{Response: pdu.LogoutCleanupFailed, ITT: x.PDU.(*pdu.LogoutRequest).ITT, Time2Wait: 3, Time2Retain: 9, SeqNums: f.Seq(true)}, nil)
		r := <-ch
		var le *LogoutResponseError
		if r.OK() || !r.Responded || r.Response != 3 || r.Time2Wait != 3 || r.Time2Retain != 9 || !errors.As(r.Err, &le) {
			t.Fatalf("result %+v", r)
		}
		f.ExpectClosed()
		if s.LoggedOut() {
			t.Error("LoggedOut after a refused logout")
		}
	})
	t.Run("no answer", func(t *testing.T) {
		s, f := fakeSession(t, testConfig(), faketarget.Login{})
		r := s.Conns()[0].Logout(context.Background(), LogoutOptions{Reason: pdu.LogoutCloseConnection, Timeout: 50 * time.Millisecond})
		if !errors.Is(r.Err, ErrLogoutTimeout) || r.Responded {
			t.Fatalf("result %+v", r)
		}
		f.Expect(pdu.OpLogoutRequest)
		f.ExpectClosed()
	})
	t.Run("rejected immediate, then in order", func(t *testing.T) {
		s, f := fakeSession(t, testConfig(), faketarget.Login{})
		ch := make(chan LogoutResult, 1)
		go func() { ch <- s.Conns()[0].Logout(context.Background(), LogoutOptions{Timeout: wait}) }()
		x := f.Expect(pdu.OpLogoutRequest)
		f.MustSend(&pdu.Reject{Reason: pdu.RejectImmediateCommand, ITT: 0xffffffff, SeqNums: f.Seq(true)}, x.BHS[:])
		x = f.Expect(pdu.OpLogoutRequest)
		if x.BHS.Immediate() {
			t.Error("second Logout Request still immediate")
		}
		f.AnswerLogout(x, pdu.LogoutSuccess)
		if r := <-ch; !r.OK() {
			t.Fatalf("result %+v", r)
		}
	})
}

// Commands running when a logout starts may finish within DrainTimeout; a
// command issued after it starts is refused at once.
func TestLogoutDrains(t *testing.T) {
	s, f := fakeSession(t, testConfig(), faketarget.Login{})
	ctx := context.Background()
	ch := goExecute(ctx, s, readCmd(512))
	x := f.Expect(pdu.OpSCSICommand)
	lch := make(chan LogoutResult, 1)
	go func() { lch <- s.Conns()[0].Logout(ctx, LogoutOptions{DrainTimeout: wait, Timeout: wait}) }()
	f.ExpectNothing() // draining: no Logout Request yet
	if _, err := s.Execute(ctx, readCmd(512)); !errors.Is(err, ErrNotSent) {
		t.Errorf("Execute during the logout: %v, want ErrNotSent", err)
	}
	f.ReadData(x, make([]byte, 512))
	if r := waitExec(t, ch); r.err != nil {
		t.Fatalf("drained command: %v", r.err)
	}
	f.AnswerLogout(f.Expect(pdu.OpLogoutRequest), pdu.LogoutSuccess)
	if r := <-lch; !r.OK() || r.Failed != 0 {
		t.Fatalf("logout %+v", r)
	}
}

// A command that cannot finish before the Logout Request fails saying its
// outcome is unknown. An R2T the target sent before it read the request
// fails the write with no Data-Out sent, and the logout goes on.
func TestLogoutFailsRunningCommands(t *testing.T) {
	cfg := testConfig()
	p := DefaultParams()
	p.InitialR2T, p.ImmediateData = true, false
	cfg.Params = &p
	s, f := fakeSession(t, cfg, faketarget.Login{})
	ctx := context.Background()
	ch := goExecute(ctx, s, writeCmd(pattern(4096, 0)))
	x := f.Expect(pdu.OpSCSICommand)
	lch := make(chan LogoutResult, 1)
	go func() { lch <- s.Conns()[0].Logout(ctx, LogoutOptions{Timeout: wait}) }()
	lr := f.Expect(pdu.OpLogoutRequest)
	f.Send(&pdu.R2T{ITT: x.PDU.(*pdu.SCSICommand).ITT, TTT: 1, SeqNums: f.Seq(false), DesiredDataTransferLength: 4096}, nil)
	if e := waitExec(t, ch); !errors.Is(e.err, ErrLoggedOut) {
		t.Fatalf("write after an R2T that followed the logout: %v, want ErrLoggedOut", e.err)
	}
	f.ExpectNothing() // no Data-Out after the Logout Request
	f.AnswerLogout(lr, pdu.LogoutSuccess)
	if r := <-lch; !r.OK() {
		t.Fatalf("logout after the late R2T: %+v", r)
	}
}

// A connection added to a session logs in with the session's TSIH and only
// its own keys; a target changing the TSIH is refused.
func TestAddConnection(t *testing.T) {
	cfg := testConfig()
	s, srv := fakeSessionServer(t, cfg, faketarget.Login{TSIH: 0x77})
	c, err := s.AddConnection(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	f2 := srv.Next()
	if c.CID() != 1 || len(s.Conns()) != 2 {
		t.Fatalf("CID %d, %d connections", c.CID(), len(s.Conns()))
	}
	for _, r := range f2.LoginRequests() {
		if r.TSIH != 0x77 || r.CID != 1 || r.ISID != s.ISID() {
			t.Errorf("added connection's Login Request %+v", r)
		}
	}
	keys := f2.LoginKeys()
	for _, kv := range keys {
		if k, _ := pdu.LookupKey(kv.Key); k.LeadingOnly {
			t.Errorf("added connection sent LO key %s", kv.Key)
		}
	}
	if _, ok := pdu.Lookup(keys, "TargetName"); !ok {
		t.Error("added connection sent no TargetName")
	}

	// Commands go over both connections.
	f1 := srv.Targets()[0]
	for i := 0; i < 4; i++ {
		ch := goExecute(context.Background(), s, readCmd(512))
		var x faketarget.PDU
		select {
		case x = <-f1.In():
			f1.ReadData(x, make([]byte, 512))
		case x = <-f2.In():
			f2.ReadData(x, make([]byte, 512))
		case <-time.After(wait):
			t.Fatal("no command")
		}
		if r := waitExec(t, ch); r.err != nil {
			t.Fatal(r.err)
		}
	}

	// Logging out one connection leaves the other.
	lch := make(chan LogoutResult, 1)
	go func() {
		lch <- c.Logout(context.Background(), LogoutOptions{Reason: pdu.LogoutCloseConnection, Timeout: wait})
	}()
	x := f2.Expect(pdu.OpLogoutRequest)
	if lr := x.PDU.(*pdu.LogoutRequest); lr.ReasonCode != pdu.LogoutCloseConnection || lr.CID != 1 {
		t.Errorf("Logout Request %+v", lr)
	}
	f2.AnswerLogout(x, pdu.LogoutSuccess)
	if r := <-lch; !r.OK() {
		t.Fatalf("%+v", r)
	}
	if len(s.Conns()) != 1 || s.LoggedOut() {
		t.Fatalf("%d connections, LoggedOut %v", len(s.Conns()), s.LoggedOut())
	}

	// A new connection takes the place of the one that left; the session
	// no longer holds the old one.
	if _, err := s.AddConnection(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv.Next()
	s.mu.Lock()
	held := len(s.all)
	s.mu.Unlock()
	if held != 2 {
		t.Errorf("session holds %d connections, want 2", held)
	}

	srv.SetLogin(faketarget.Login{TSIH: 0x77, AddedTSIH: 0x78})
	_, err = s.AddConnection(context.Background())
	faketarget.AsProtocolError(t, err, pdu.OpLoginResponse, "TSIH")
}

// A session logout (reason 0) that the target refuses gives the session's
// other connections back their commands.
func TestSessionLogoutRefusedResumesOthers(t *testing.T) {
	s, srv := fakeSessionServer(t, testConfig(), faketarget.Login{})
	c2, err := s.AddConnection(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	f2 := srv.Next()
	c1, f1 := s.Conns()[0], srv.Targets()[0]
	lch := make(chan LogoutResult, 1)
	go func() {
		lch <- c1.Logout(context.Background(), LogoutOptions{Reason: pdu.LogoutCloseSession, Timeout: wait})
	}()
	x := f1.Expect(pdu.OpLogoutRequest)
	if c2.Active() {
		t.Error("other connection takes commands during a session logout")
	}
	f1.AnswerLogout(x, pdu.LogoutCleanupFailed)
	if r := <-lch; r.OK() {
		t.Fatal("refused logout reported OK")
	}
	if !c2.Active() {
		t.Fatal("other connection not given back its commands")
	}
	ch := goExecute(context.Background(), s, readCmd(512))
	f2.ReadData(f2.Expect(pdu.OpSCSICommand), make([]byte, 512))
	if r := waitExec(t, ch); r.err != nil {
		t.Fatal(r.err)
	}
}

func TestLoginHostile(t *testing.T) {
	cfg := testConfig()
	t.Run("non-login PDU during login", func(t *testing.T) {
		err := fakeLoginErr(t, cfg, func(f *faketarget.Target) error {
			if _, _, err := f.ReadLogin(); err != nil {
				return err
			}
			return f.Send(&pdu.NOPIn{ITT: 0xffffffff, TTT: 0xffffffff}, nil)
		})
		faketarget.AsProtocolError(t, err, pdu.OpNOPIn, "Opcode")
	})
	t.Run("login reject", func(t *testing.T) {
		err := fakeLoginErr(t, cfg, func(f *faketarget.Target) error {
			req, _, err := f.ReadLogin()
			if err != nil {
				return err
			}
			return f.Send(&pdu.LoginResponse{CSG: req.CSG, ISID: req.ISID, ITT: req.ITT, StatusClass: 2, StatusDetail: 3}, nil)
		})
		var le *LoginError
		if !errors.As(err, &le) || le.Status != pdu.LoginTargetNotFound {
			t.Fatalf("%v", err)
		}
	})
	t.Run("wrong ITT", func(t *testing.T) {
		err := fakeLoginErr(t, cfg, func(f *faketarget.Target) error {
			req, _, err := f.ReadLogin()
			if err != nil {
				return err
			}
			return f.Send(&pdu.LoginResponse{Transit: true, CSG: req.CSG, NSG: 1, ISID: req.ISID, ITT: req.ITT + 1}, []byte("AuthMethod=None\x00"))
		})
		faketarget.AsProtocolError(t, err, pdu.OpLoginResponse, "InitiatorTaskTag")
	})
	t.Run("last key without NUL", func(t *testing.T) {
		err := fakeLoginErr(t, cfg, func(f *faketarget.Target) error {
			req, _, err := f.ReadLogin()
			if err != nil {
				return err
			}
			return f.Send(&pdu.LoginResponse{Transit: true, CSG: req.CSG, NSG: 1, ISID: req.ISID, ITT: req.ITT}, []byte("AuthMethod=None"))
		})
		var ne *NegotiationError
		if !errors.As(err, &ne) {
			t.Fatalf("%v", err)
		}
	})
	t.Run("redirect to a malformed address", func(t *testing.T) {
		err := fakeLoginErr(t, cfg, func(f *faketarget.Target) error {
			req, _, err := f.ReadLogin()
			if err != nil {
				return err
			}
			return f.Send(&pdu.LoginResponse{CSG: req.CSG, ISID: req.ISID, ITT: req.ITT, StatusClass: 1, StatusDetail: 1}, []byte("TargetAddress=,1\x00"))
		})
		var ne *NegotiationError
		if !errors.As(err, &ne) || ne.Key != "TargetAddress" {
			t.Fatalf("%v", err)
		}
	})
	t.Run("target stays in the security stage", func(t *testing.T) {
		err := fakeLoginErr(t, cfg, func(f *faketarget.Target) error {
			for {
				req, _, err := f.ReadLogin()
				if err != nil {
					return nil
				}
				if err := f.Send(&pdu.LoginResponse{CSG: req.CSG, ISID: req.ISID, ITT: req.ITT}, []byte("AuthMethod=None\x00")); err != nil {
					return nil
				}
			}
		})
		var ne *NegotiationError
		if !errors.As(err, &ne) || !strings.Contains(ne.Reason, "security stage") {
			t.Fatalf("%v", err)
		}
	})
	t.Run("login timeout", func(t *testing.T) {
		c := cfg
		c.LoginTimeout = 50 * time.Millisecond
		err := fakeLoginErr(t, c, func(f *faketarget.Target) error {
			f.ReadLogin()
			f.ReadLogin() // blocks until the initiator gives up
			return nil
		})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%v", err)
		}
	})
}

func TestLoginRedirect(t *testing.T) {
	var dialed []string
	cfg := testConfig()
	first := true
	srv := faketarget.NewServer(t, fakeTiming, faketarget.Login{})
	cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialed = append(dialed, addr)
		if first {
			first = false
			ini, tgt := net.Pipe()
			f := faketarget.New(t, tgt, fakeTiming)
			go func() {
				req, _, err := f.ReadLogin()
				if err == nil {
					f.Send(&pdu.LoginResponse{CSG: req.CSG, ISID: req.ISID, ITT: req.ITT, StatusClass: 1, StatusDetail: 1},
						[]byte("TargetAddress=[fe80::2]:3262,3\x00"))
				}
				f.Close()
			}()
			return ini, nil
		}
		return srv.Dial(ctx, network, addr)
	}
	s, err := Login(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	srv.Next()
	if len(dialed) != 2 || dialed[1] != "[fe80::2]:3262" || s.Portal() != "[fe80::2]:3262" {
		t.Errorf("dialed %v, portal %s", dialed, s.Portal())
	}
}

// A target that stops in the middle of a Data-In while the caller gives up:
// Execute still returns (the buffer is not left to the reader), within
// NOPTimeout, and the connection is dropped.
func TestCancelDuringStalledDataIn(t *testing.T) {
	cfg := testConfig()
	cfg.NOPTimeout = 100 * time.Millisecond
	s, f := fakeSession(t, cfg, faketarget.Login{})
	ctx, cancel := context.WithCancel(context.Background())
	cmd := readCmd(8192)
	ch := goExecute(ctx, s, cmd)
	c := f.Expect(pdu.OpSCSICommand).PDU.(*pdu.SCSICommand)
	var h pdu.BHS
	(&pdu.DataIn{ITT: c.ITT, TTT: 0xffffffff, SeqNums: f.Seq(false)}).MarshalBHS(&h)
	h.SetLengths(0, 8192)
	// The header, then half the data, then nothing. Two writes on the
	// pipe: the second ends only once the reader reads it, inside the
	// Data-In with the command's buffer taken, where the cancel must find
	// it (in one write, the reader could have the bytes before it took
	// the buffer, and the cancel then won it and sent an ABORT TASK).
	if err := f.SendRaw(h[:]); err != nil {
		t.Fatal(err)
	}
	if err := f.SendRaw(make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	cancel()
	start := time.Now()
	r := waitExec(t, ch)
	if !errors.Is(r.err, context.Canceled) {
		t.Fatalf("Execute: %v", r.err)
	}
	clear(cmd.Read) // ours again
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Execute took %v to return", d)
	}
	f.ExpectClosed()
	if err := s.all[0].Err(); !errors.Is(err, ErrDeadPeer) {
		t.Errorf("Conn.Err %v", err)
	}
}

// A context already done sends nothing.
func TestExecuteDoneContext(t *testing.T) {
	s, f := fakeSession(t, testConfig(), faketarget.Login{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Execute(ctx, readCmd(512)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Execute: %v", err)
	}
	f.ExpectNothing()
}

// A target that redirects more than MaxRedirects times fails the login with a
// *LoginError carrying its redirect status.
func TestLoginTooManyRedirects(t *testing.T) {
	cfg := testConfig()
	cfg.MaxRedirects = 2
	dials := 0
	err := fakeLoginErrN(t, cfg, &dials, func(f *faketarget.Target) error {
		req, _, err := f.ReadLogin()
		if err != nil {
			return err
		}
		return f.Send(&pdu.LoginResponse{CSG: req.CSG, ISID: req.ISID, ITT: req.ITT, StatusClass: 1, StatusDetail: 1},
			[]byte("TargetAddress=10.9.9.9:3260,1\x00"))
	})
	var le *LoginError
	if !errors.As(err, &le) || le.Status != pdu.LoginTargetMovedTemp {
		t.Fatalf("%v, want a LoginError 0x0101", err)
	}
	if dials != 3 {
		t.Errorf("%d dials, want 3", dials)
	}
}
