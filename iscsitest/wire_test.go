package iscsitest

import (
	"bytes"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/pdu"
)

var crc = []pdu.KV{{Key: "HeaderDigest", Value: "CRC32C"}, {Key: "DataDigest", Value: "CRC32C"}}

// sendCorrupt writes p with data whose data digest does not match.
func (i *ini) sendCorrupt(p pdu.PDU, data []byte) {
	i.t.Helper()
	var h pdu.BHS
	p.MarshalBHS(&h)
	h.SetLengths(0, len(data))
	buf := bytes.Clone(data)
	i.w.AppendRaw(&h, nil, buf)
	buf[0] ^= 0xff // after the digest is computed
	i.nc.SetWriteDeadline(time.Now().Add(wait))
	if err := i.w.Flush(); err != nil {
		i.t.Fatal(err)
	}
}

func TestDataDigestError(t *testing.T) {
	tg := newTarget(t, Config{InitialR2T: true})
	i := dial(t, tg)
	i.login(loginOpts{op: crc})
	if s := sessionByTSIH(tg, i.tsih); !s.Conns[0].HeaderDigest || !s.Conns[0].DataDigest {
		t.Fatalf("digests not on: %+v", s.Conns)
	}
	// A NOP-Out with a bad data digest: rejected and discarded, the
	// connection goes on (RFC 7143 §7.8).
	i.sendCorrupt(&pdu.NOPOut{Immediate: true, ITT: 0x42, TTT: 0xffffffff, CmdSN: *i.cmdSN}, []byte("ping"))
	p, data := i.recv()
	if rj, ok := p.(*pdu.Reject); !ok || rj.Reason != pdu.RejectDataDigestError || len(data) != pdu.BHSLen {
		t.Fatalf("got %s %+v", p.Opcode(), p)
	}
	i.nop([]byte("ok"))

	// A Data-Out with a bad digest: rejected, and the write ends in CHECK
	// CONDITION once its data is all in.
	itt := i.nextITT()
	c := &pdu.SCSICommand{Final: true, Write: true, ITT: itt, ExpectedDataTransferLength: 1024, CmdSN: *i.cmdSN}
	copy(c.CDB[:], write10(0, 2))
	i.send(c, nil)
	*i.cmdSN++
	r2t := i.recvR2T()
	i.sendCorrupt(&pdu.DataOut{ITT: itt, TTT: r2t.TTT}, make([]byte, 512))
	i.send(&pdu.DataOut{Final: true, ITT: itt, TTT: r2t.TTT, DataSN: 1, BufferOffset: 512}, make([]byte, 512))
	if p, _ := i.recv(); p.(*pdu.Reject).Reason != pdu.RejectDataDigestError {
		t.Fatalf("got %+v", p)
	}
	p, data = i.recv()
	if r := p.(*pdu.SCSIResponse); r.Status != pdu.StatusCheckCondition || len(data) < 16 || data[2+2]&0xf != 0x0b ||
		data[2+12] != 0x47 || data[2+13] != 0x05 {
		t.Fatalf("got %+v % x", r, data)
	}
	if st := tg.Stats(); st.DigestErrors != 2 {
		t.Fatalf("Stats().DigestErrors = %d", st.DigestErrors)
	}
}

func (i *ini) recvR2T() *pdu.R2T {
	i.t.Helper()
	p, _ := i.recv()
	r, ok := p.(*pdu.R2T)
	if !ok {
		i.t.Fatalf("got %s, want R2T", p.Opcode())
	}
	return r
}

func TestHeaderDigestError(t *testing.T) {
	tg := newTarget(t, Config{})
	i := dial(t, tg)
	i.login(loginOpts{op: crc})
	var h pdu.BHS
	(&pdu.NOPOut{Immediate: true, ITT: 1, TTT: 0xffffffff}).MarshalBHS(&h)
	i.nc.Write(append(h[:], 1, 2, 3, 4))
	i.expectClosed(false)
	if st := tg.Stats(); st.DigestErrors != 1 {
		t.Fatalf("Stats().DigestErrors = %d", st.DigestErrors)
	}
}

// TestMalformedPDUs sends PDUs no initiator may send: each is rejected
// with its header and the connection closed, before any data is read.
func TestMalformedPDUs(t *testing.T) {
	tg := newTarget(t, Config{})
	for _, tc := range []struct {
		name   string
		h      func(h *pdu.BHS)
		data   []byte
		reason pdu.RejectReason
	}{
		{"undefined opcode", func(h *pdu.BHS) { h[0] = 0x1f }, nil, pdu.RejectCommandNotSupported},
		{"target opcode", func(h *pdu.BHS) { (&pdu.NOPIn{ITT: 1}).MarshalBHS(h) }, nil, pdu.RejectProtocolError},
		{"data beyond MaxRecvDataSegmentLength", func(h *pdu.BHS) {
			(&pdu.NOPOut{Immediate: true, ITT: 1, TTT: 0xffffffff}).MarshalBHS(h)
			h.SetLengths(0, 16<<20-1)
		}, nil, pdu.RejectProtocolError},
		{"data in a Logout Request", func(h *pdu.BHS) {
			(&pdu.LogoutRequest{Immediate: true, ITT: 1}).MarshalBHS(h)
			h.SetLengths(0, 4)
		}, []byte("abcd"), pdu.RejectProtocolError},
		{"AHS in a NOP-Out", func(h *pdu.BHS) {
			(&pdu.NOPOut{Immediate: true, ITT: 1, TTT: 0xffffffff}).MarshalBHS(h)
			h[4] = 255
		}, nil, pdu.RejectProtocolError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			i := dial(t, tg)
			i.login(loginOpts{})
			var h pdu.BHS
			tc.h(&h)
			i.nc.SetWriteDeadline(time.Now().Add(wait))
			i.nc.Write(append(h[:], tc.data...))
			p, data := i.recv()
			if rj, ok := p.(*pdu.Reject); !ok || rj.Reason != tc.reason || !bytes.Equal(data, h[:]) {
				t.Fatalf("got %s %+v, want Reject %#x with the header", p.Opcode(), p, tc.reason)
			}
			i.expectClosed(false)
		})
	}
}

func TestNopInPings(t *testing.T) {
	tg := newTarget(t, Config{NopInInterval: 20 * time.Millisecond, NopInTimeout: 100 * time.Millisecond})
	i := dial(t, tg)
	i.login(loginOpts{})
	for range 3 {
		p, _ := i.recv()
		ping, ok := p.(*pdu.NOPIn)
		if !ok || ping.ITT != 0xffffffff || ping.TTT == 0xffffffff {
			t.Fatalf("got %s %+v, want a NOP-In ping", p.Opcode(), p)
		}
		i.send(&pdu.NOPOut{Immediate: true, ITT: 0xffffffff, TTT: ping.TTT, LUN: ping.LUN, CmdSN: *i.cmdSN}, nil)
	}
	// Unanswered, a ping costs the connection.
	deadline := time.Now().Add(wait)
	for {
		p, _, err := i.tryRecv(wait)
		if err != nil {
			if !isReset(err) {
				t.Fatalf("got %v, want a reset", err)
			}
			break
		}
		if _, ok := p.(*pdu.NOPIn); !ok || time.Now().After(deadline) {
			t.Fatalf("got %s", p.Opcode())
		}
	}
}

func TestUnstartedAndClose(t *testing.T) {
	tg := NewUnstartedTarget(Config{})
	defer tg.Close()
	func() {
		defer func() {
			if recover() == nil {
				t.Error("Pipe before Start did not panic")
			}
		}()
		tg.Pipe()
	}()
	var seen atomic.Bool
	tg.Config.Hook = func(ev *Event) Action { seen.Store(true); return Continue }
	tg.Start()
	i := dial(t, tg)
	i.login(loginOpts{})
	if !seen.Load() {
		t.Fatal("the hook set before Start was not called")
	}
	// Close ends live connections at once and waits for its goroutines;
	// goleak in TestMain checks none is left.
	p := newIni(t, tg.Pipe())
	tg.Close()
	tg.Close()
	if _, _, err := i.tryRecv(wait); err == nil {
		t.Fatal("connection alive after Close")
	}
	if _, _, err := p.tryRecv(wait); err == nil {
		t.Fatal("pipe alive after Close")
	}
	if _, err := dialErr(tg); err == nil {
		t.Fatal("dial after Close succeeded")
	}
}

// TestPipeNoDeadlock reads the target's view while a response waits for the
// pipe's reader: the target holds no lock across a write.
func TestPipeNoDeadlock(t *testing.T) {
	tg := newTarget(t, Config{})
	i := newIni(t, tg.Pipe())
	i.login(loginOpts{})
	i.send(&pdu.NOPOut{Immediate: true, ITT: 9, TTT: 0xffffffff}, make([]byte, 4096))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 10 {
			tg.Sessions()
			tg.Stats()
		}
	}()
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatal("Sessions() blocked behind a write to the pipe")
	}
	if p, _ := i.recv(); p.(*pdu.NOPIn).ITT != 9 {
		t.Fatalf("got %+v", p)
	}
}

func TestLUNData(t *testing.T) {
	tg := newTarget(t, Config{LUNs: []int64{3<<20 + 1000}})
	if n := len(tg.LUNData(0)); n != 3<<20+512 {
		t.Fatalf("LUN of %d bytes", n)
	}
	if tg.LUNData(1) != nil {
		t.Fatal("LUNData of a missing LUN")
	}
	i := dial(t, tg)
	i.login(loginOpts{})
	last := uint32((3<<20+512)/BlockSize - 1)
	data := pattern(BlockSize, 4)
	i.write(0, last, data)
	if !bytes.Equal(tg.LUNData(0)[last*BlockSize:], data) {
		t.Fatal("last block")
	}
}
