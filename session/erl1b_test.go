package session

import (
	"bytes"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/faketarget"
	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/pdu"
)

// ERL 1 beyond Data-In: lost R2Ts (R2T SNACK), a command rejected for its
// immediate data's digest (retry), data digest errors on status PDUs
// (Status SNACK, or the connection's end where the RFC allows nothing
// else).

// erl1bSession logs in to tg with both digests and the Params adjust
// makes, and writes a known pattern over the first 2 MiB of LUN 0.
func erl1bSession(t *testing.T, tg *iscsitest.Target, nop time.Duration, adjust func(*Params)) (*Session, []byte) {
	t.Helper()
	ctx := interopCtx(t)
	cfg := testTargetConfig(tg, nil)
	cfg.NOPInterval = nop
	p := DefaultParams()
	p.HeaderDigest, p.DataDigest = true, true
	if adjust != nil {
		adjust(&p)
	}
	cfg.Params = &p
	s := mustLogin(t, ctx, cfg)
	t.Cleanup(func() { s.Close() })
	data := randomData(t, 2<<20)
	if err := s.Write(ctx, 0, 0, 512, data); err != nil {
		t.Fatalf("writing the pattern: %v", err)
	}
	return s, data
}

func isR2T(h *pdu.BHS) bool { return h.Opcode() == pdu.OpR2T }

// TestERL1R2TSNACK corrupts the header digest of one R2T of a 512 KiB
// write made of 64 KiB bursts. A middle R2T (four outstanding) is found
// missing by the R2TSN of the next one: one R2T SNACK, the target resends
// from it. The last R2T (one outstanding) has no later R2T: the keepalive's
// NOP-In after the skipped header makes the write probe for it. Either
// way the write completes, the LUN holds it, and the connection lives on.
func TestERL1R2TSNACK(t *testing.T) {
	for _, tc := range []struct {
		name        string
		outstanding int
		nth         int
		nop         time.Duration
		probes      uint64
	}{
		{"middle R2T", 4, 2, -1, 0},
		{"last R2T", 1, 8, 50 * time.Millisecond, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var armed atomic.Bool
			fault := iscsitest.CorruptNth(func(h *pdu.BHS) bool { return armed.Load() && isR2T(h) }, tc.nth, iscsitest.Corrupt{Header: true})
			tg := newTestTarget(t, iscsitest.Config{ErrorRecoveryLevel: 1, InitialR2T: true, MaxBurstLength: 64 << 10,
				MaxOutstandingR2T: tc.outstanding, DigestFault: fault})
			s, _ := erl1bSession(t, tg, tc.nop, func(p *Params) {
				p.InitialR2T, p.ImmediateData = true, false
				p.MaxBurstLength, p.MaxOutstandingR2T = 64<<10, tc.outstanding
			})
			if got := s.Params().MaxOutstandingR2T; got != tc.outstanding {
				t.Fatalf("negotiated MaxOutstandingR2T %d, want %d", got, tc.outstanding)
			}
			armed.Store(true)
			ctx := interopCtx(t)
			data := randomData(t, 512<<10)
			if err := s.Write(ctx, 0, 16, 512, data); err != nil {
				t.Fatalf("write with a lost R2T: %v (target %+v)", err, tg.Stats())
			}
			if !bytes.Equal(tg.LUNData(0)[16*512:16*512+len(data)], data) {
				t.Fatal("the LUN does not hold what was written")
			}
			st, rs := tg.Stats(), recoveryStats(s)
			if st.DigestsCorrupted != 1 || rs.HeadersSkipped != 1 {
				t.Fatalf("corrupted %d, initiator %+v: want one R2T header corrupted and skipped", st.DigestsCorrupted, rs)
			}
			if rs.R2TSNACKs != 1 || rs.R2TProbes != tc.probes || st.Received[pdu.OpSNACKRequest] != 1 || st.Resent == 0 {
				t.Fatalf("initiator %+v, target SNACKs %d resent %d: want one R2T SNACK (%d probe) and a resend",
					rs, st.Received[pdu.OpSNACKRequest], st.Resent, tc.probes)
			}
			buf := make([]byte, len(data))
			if err := s.Read(ctx, 0, 16, 512, buf); err != nil || !bytes.Equal(buf, data) {
				t.Fatalf("reading the write back: %v (equal %v)", err, bytes.Equal(buf, data))
			}
			mustLogout(t, ctx, s)
		})
	}
}

// TestERL1CommandRetry has the target find a data digest error in the
// immediate data of a write's SCSI Command: it rejects the command
// ("data digest error") and discards it, its CmdSN included. The
// initiator retries it (same ITT, CmdSN, CDB, immediate data, then its
// unsolicited Data-Out); the write completes and the LUN holds it.
func TestERL1CommandRetry(t *testing.T) {
	for _, tc := range []struct {
		name       string
		initialR2T bool
	}{
		{"immediate data only", true},
		{"immediate and unsolicited data", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var armed atomic.Bool
			var cmds, rejected atomic.Int32
			var first, second pdu.BHS
			hook := func(ev *iscsitest.Event) iscsitest.Action {
				if !armed.Load() || ev.Header.Opcode() != pdu.OpSCSICommand {
					return iscsitest.Continue
				}
				switch cmds.Add(1) {
				case 1:
					first = *ev.Header
					rejected.Add(1)
					return iscsitest.BadDataDigest
				case 2:
					second = *ev.Header
				}
				return iscsitest.Continue
			}
			tg := newTestTarget(t, iscsitest.Config{ErrorRecoveryLevel: 1, InitialR2T: tc.initialR2T, ImmediateData: true,
				MaxRecvDataSegmentLength: 8 << 10, FirstBurstLength: 64 << 10, Hook: hook})
			s, _ := erl1bSession(t, tg, -1, func(p *Params) {
				p.InitialR2T, p.ImmediateData = tc.initialR2T, true
				p.FirstBurstLength = 64 << 10
			})
			armed.Store(true)
			ctx := interopCtx(t)
			data := randomData(t, 128<<10)
			if err := s.Write(ctx, 0, 32, 512, data); err != nil {
				t.Fatalf("write whose command was rejected for its digest: %v (target %+v)", err, tg.Stats())
			}
			if !bytes.Equal(tg.LUNData(0)[32*512:32*512+len(data)], data) {
				t.Fatal("the LUN does not hold what was written")
			}
			if n := cmds.Load(); n != 2 {
				t.Fatalf("the target saw the command %d times, want 2 (the first, and its retry)", n)
			}
			// All but ExpStatSN (the Reject took a StatSN) is the same.
			copy(first[28:32], second[28:32])
			if first != second {
				t.Fatalf("the retry differs from the first attempt:\n%x\n%x", first[:], second[:])
			}
			if rs := recoveryStats(s); rs.CommandRetries != 1 {
				t.Fatalf("initiator %+v: want one command retry", rs)
			}
			// The connection goes on: the next command's CmdSN follows.
			buf := make([]byte, 4096)
			if err := s.Read(ctx, 0, 32, 512, buf); err != nil || !bytes.Equal(buf, data[:4096]) {
				t.Fatalf("read after the retry: %v", err)
			}
			mustLogout(t, ctx, s)
		})
	}
}

// TestERL1StatusDataDigest corrupts the data digest of status PDUs with a
// data segment: a SCSI Response carrying sense data and a Text Response.
// The initiator discards each and asks for it again with a Status SNACK for
// its StatSN; the command ends with the target's sense data and the text
// exchange with its text.
func TestERL1StatusDataDigest(t *testing.T) {
	t.Run("SCSI Response with sense", func(t *testing.T) {
		var armed atomic.Bool
		fault := iscsitest.CorruptNth(func(h *pdu.BHS) bool { return armed.Load() && h.Opcode() == pdu.OpSCSIResponse }, 1, iscsitest.Corrupt{Data: true})
		tg := newTestTarget(t, iscsitest.Config{ErrorRecoveryLevel: 1, DigestFault: fault})
		s, _ := erl1bSession(t, tg, -1, nil)
		armed.Store(true)
		ctx := interopCtx(t)
		// Past the end of the 64 MiB LUN: CHECK CONDITION, LBA out of range.
		err := s.Read(ctx, 0, 1<<20, 512, make([]byte, 4096))
		var se *SCSIError
		if !errors.As(err, &se) || se.Status != pdu.StatusCheckCondition || len(se.Sense) < 14 || se.Sense[12] != 0x21 {
			t.Fatalf("read past the end: %v, want CHECK CONDITION with the LBA out of range sense", err)
		}
		st, rs := tg.Stats(), recoveryStats(s)
		if st.DigestsCorrupted != 1 || rs.StatusDataErrors != 1 || rs.StatusSNACKs != 1 || st.Resent != 1 {
			t.Fatalf("corrupted %d resent %d, initiator %+v: want one of each", st.DigestsCorrupted, st.Resent, rs)
		}
		mustLogout(t, ctx, s)
	})
	t.Run("Text Response", func(t *testing.T) {
		var armed atomic.Bool
		fault := iscsitest.CorruptNth(func(h *pdu.BHS) bool { return armed.Load() && h.Opcode() == pdu.OpTextResponse }, 1, iscsitest.Corrupt{Data: true})
		tg := newTestTarget(t, iscsitest.Config{ErrorRecoveryLevel: 1, DigestFault: fault})
		s, _ := erl1bSession(t, tg, -1, nil)
		armed.Store(true)
		ctx := interopCtx(t)
		targets, err := s.SendTargets(ctx, iscsitest.DefaultName)
		if err != nil || len(targets) != 1 || targets[0].Name != iscsitest.DefaultName {
			t.Fatalf("SendTargets with a corrupted Text Response: %+v, %v", targets, err)
		}
		st, rs := tg.Stats(), recoveryStats(s)
		if st.DigestsCorrupted != 1 || rs.StatusDataErrors != 1 || rs.StatusSNACKs != 1 || st.Resent != 1 {
			t.Fatalf("corrupted %d resent %d, initiator %+v: want one of each", st.DigestsCorrupted, st.Resent, rs)
		}
		mustLogout(t, ctx, s)
	})
}

// corruptData flips the data digest of a PDU on the wire (its last bytes).
func corruptData(b []byte) []byte {
	b[len(b)-1] ^= 0xff
	return b
}

// TestERL1NOPInDataDigest: a NOP-In answering the keepalive's NOP-Out
// with a data segment whose digest fails is asked for again with a Status
// SNACK for its StatSN (RunLength 1) and the connection lives on; a NOP-In
// ping (reserved ITT, no StatSN of its own) cannot be asked for again, and
// its digest error ends the connection, saying so.
func TestERL1NOPInDataDigest(t *testing.T) {
	login := faketarget.Login{Digests: true, Answers: map[string]string{"ErrorRecoveryLevel": "1"}}
	config := func(nop time.Duration) Config {
		cfg := testConfig()
		cfg.NOPInterval = nop
		p := DefaultParams()
		p.HeaderDigest, p.DataDigest = true, true
		cfg.Params = &p
		return cfg
	}
	t.Run("answer to a NOP-Out", func(t *testing.T) {
		s, f, _ := tcpSession(t, config(50*time.Millisecond), login)
		if erl := s.Params().ErrorRecoveryLevel; erl != 1 {
			t.Fatalf("negotiated ErrorRecoveryLevel %d, want 1", erl)
		}
		x := f.Expect(pdu.OpNOPOut)
		seq := f.Seq(true)
		nop := &pdu.NOPIn{ITT: x.BHS.ITT(), TTT: pdu.ReservedTag, SeqNums: seq}
		if err := f.SendRaw(corruptData(f.Wire(nop, []byte("ping data")))); err != nil {
			t.Fatalf("sending the NOP-In: %v", err)
		}
		sn := f.Expect(pdu.OpSNACKRequest).PDU.(*pdu.SNACKRequest)
		if sn.Type != pdu.SNACKStatus || sn.BegRun != seq.StatSN || sn.RunLength != 1 {
			t.Fatalf("SNACK %+v, want a Status SNACK for StatSN %d alone", sn, seq.StatSN)
		}
		f.MustSend(nop, []byte("ping data"))
		// The connection goes on: the next keepalive is answered.
		y := f.Expect(pdu.OpNOPOut)
		f.MustSend(&pdu.NOPIn{ITT: y.BHS.ITT(), TTT: pdu.ReservedTag, SeqNums: f.Seq(true)}, nil)
		f.Expect(pdu.OpNOPOut)
		c := s.Conns()[0]
		if !c.Active() {
			t.Fatalf("connection ended: %v", c.Err())
		}
		if rs := c.RecoveryStats(); rs.StatusDataErrors != 1 || rs.StatusSNACKs != 1 {
			t.Fatalf("initiator %+v: want one status data error, one Status SNACK", rs)
		}
	})
	t.Run("ping", func(t *testing.T) {
		s, f, _ := tcpSession(t, config(-1), login)
		c := s.Conns()[0]
		ping := &pdu.NOPIn{ITT: pdu.ReservedTag, TTT: 0x5a, SeqNums: f.Seq(false)}
		if err := f.SendRaw(corruptData(f.Wire(ping, []byte("ping data")))); err != nil {
			t.Fatalf("sending the ping: %v", err)
		}
		select {
		case <-c.Done():
		case <-time.After(wait):
			t.Fatal("the connection did not end")
		}
		var de *pdu.DigestError
		if err := c.Err(); !errors.As(err, &de) || !de.Data || !strings.Contains(err.Error(), "cannot be asked for again") {
			t.Fatalf("connection error %v, want the ping's data digest error, saying it cannot be asked for again", err)
		}
	})
}
