package session

import (
	"bytes"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/pdu"
)

// Within-connection recovery (ERL 1) against the in-memory target, which
// corrupts digests of chosen PDUs in both directions.

// erl1Session logs in to tg with both digests at the ERL the target
// allows, and writes a known pattern over the first 2 MiB of LUN 0.
func erl1Session(t *testing.T, tg *iscsitest.Target, nop time.Duration) (*Session, []byte) {
	t.Helper()
	return erl1bSession(t, tg, nop, nil)
}

func isDataIn(h *pdu.BHS) bool { return h.Opcode() == pdu.OpSCSIDataIn }

func recoveryStats(s *Session) RecoveryStats {
	var sum RecoveryStats
	for _, c := range s.Conns() {
		r := c.RecoveryStats()
		sum.DataSNACKs += r.DataSNACKs
		sum.StatusSNACKs += r.StatusSNACKs
		sum.DataDigestErrors += r.DataDigestErrors
		sum.HeadersSkipped += r.HeadersSkipped
		sum.DataOutRejected += r.DataOutRejected
		sum.StatusDataErrors += r.StatusDataErrors
		sum.R2TSNACKs += r.R2TSNACKs
		sum.R2TProbes += r.R2TProbes
		sum.CommandRetries += r.CommandRetries
	}
	return sum
}

// shortSNACKTimeout makes SNACKs wait d for the test.
func shortSNACKTimeout(t *testing.T, d time.Duration) {
	old := snackTimeout
	snackTimeout = d
	t.Cleanup(func() { snackTimeout = old })
}

// TestERL1DataInDigestRecovered corrupts the data digest of the second
// Data-In of a 1 MiB read: the initiator discards it, sends one Data SNACK,
// takes the resent Data-In and completes the read with the right bytes; the
// connection lives on. Status in the last Data-In and in a separate SCSI
// Response (which then waits for the data) both.
func TestERL1DataInDigestRecovered(t *testing.T) {
	for _, separate := range []bool{false, true} {
		t.Run(map[bool]string{false: "status in Data-In", true: "separate SCSI Response"}[separate], func(t *testing.T) {
			var armed atomic.Bool
			fault := iscsitest.CorruptNth(func(h *pdu.BHS) bool { return armed.Load() && isDataIn(h) }, 2, iscsitest.Corrupt{Data: true})
			tg := newTestTarget(t, iscsitest.Config{ErrorRecoveryLevel: 1, SeparateReadStatus: separate, DigestFault: fault})
			s, data := erl1Session(t, tg, -1)
			if erl := s.Params().ErrorRecoveryLevel; erl != 1 {
				t.Fatalf("negotiated ErrorRecoveryLevel %d, want 1", erl)
			}
			armed.Store(true) // written before the read's command goes out
			ctx := interopCtx(t)
			buf := make([]byte, 1<<20)
			if err := s.Read(ctx, 0, 0, 512, buf); err != nil {
				t.Fatalf("read with a corrupted Data-In: %v (target %+v)", err, tg.Stats())
			}
			if !bytes.Equal(buf, data[:len(buf)]) {
				t.Fatal("the read's data differ from what was written")
			}
			st, rs := tg.Stats(), recoveryStats(s)
			if st.DigestsCorrupted != 1 || st.Received[pdu.OpSNACKRequest] != 1 || rs.DataSNACKs != 1 || rs.DataDigestErrors != 1 {
				t.Fatalf("corrupted %d, SNACKs received %d; initiator %+v: want 1 of each", st.DigestsCorrupted, st.Received[pdu.OpSNACKRequest], rs)
			}
			if st.Resent == 0 {
				t.Fatal("the target resent nothing")
			}
			// The connection is still good.
			if err := s.Read(ctx, 0, 0, 512, buf[:4096]); err != nil || !bytes.Equal(buf[:4096], data[:4096]) {
				t.Fatalf("read after recovery: %v", err)
			}
			mustLogout(t, ctx, s)
		})
	}
}

// TestERL1HeaderDigestRecovered corrupts the header digest of a Data-In:
// the initiator skips the PDU, finds the DataSN gap at the next Data-In and
// asks for it with a Data SNACK. A SCSI Response whose header is corrupted
// is found by the StatSN of the next status PDU (a keepalive NOP-In) and
// asked for with a Status SNACK.
func TestERL1HeaderDigestRecovered(t *testing.T) {
	t.Run("Data-In", func(t *testing.T) {
		var armed atomic.Bool
		fault := iscsitest.CorruptNth(func(h *pdu.BHS) bool { return armed.Load() && isDataIn(h) }, 2, iscsitest.Corrupt{Header: true})
		tg := newTestTarget(t, iscsitest.Config{ErrorRecoveryLevel: 1, DigestFault: fault})
		s, data := erl1Session(t, tg, -1)
		armed.Store(true)
		ctx := interopCtx(t)
		buf := make([]byte, 1<<20)
		if err := s.Read(ctx, 0, 0, 512, buf); err != nil {
			t.Fatalf("read with a skipped Data-In header: %v", err)
		}
		if !bytes.Equal(buf, data[:len(buf)]) {
			t.Fatal("the read's data differ from what was written")
		}
		rs := recoveryStats(s)
		if rs.HeadersSkipped != 1 || rs.DataSNACKs != 1 || tg.Stats().Received[pdu.OpSNACKRequest] != 1 {
			t.Fatalf("initiator %+v, target SNACKs %d: want one header skipped, one Data SNACK", rs, tg.Stats().Received[pdu.OpSNACKRequest])
		}
		mustLogout(t, ctx, s)
	})
	t.Run("SCSI Response", func(t *testing.T) {
		var armed atomic.Bool
		isResp := func(h *pdu.BHS) bool { return armed.Load() && h.Opcode() == pdu.OpSCSIResponse }
		fault := iscsitest.CorruptNth(isResp, 1, iscsitest.Corrupt{Header: true})
		tg := newTestTarget(t, iscsitest.Config{ErrorRecoveryLevel: 1, SeparateReadStatus: true, DigestFault: fault})
		s, data := erl1Session(t, tg, 50*time.Millisecond)
		armed.Store(true)
		ctx := interopCtx(t)
		buf := make([]byte, 64<<10)
		if err := s.Read(ctx, 0, 0, 512, buf); err != nil {
			t.Fatalf("read whose SCSI Response header was corrupted: %v", err)
		}
		if !bytes.Equal(buf, data[:len(buf)]) {
			t.Fatal("the read's data differ from what was written")
		}
		rs := recoveryStats(s)
		if rs.HeadersSkipped != 1 || rs.StatusSNACKs != 1 {
			t.Fatalf("initiator %+v: want one header skipped, one Status SNACK", rs)
		}
		mustLogout(t, ctx, s)
	})
}

// TestERL1DataOutDigestRecovered has the target find a data digest error
// on the second Data-Out of a write: it rejects it ("data digest error")
// and asks for the data again with a recovery R2T; the write completes and
// the LUN holds what was written.
func TestERL1DataOutDigestRecovered(t *testing.T) {
	var armed atomic.Bool
	var n int
	hook := func(ev *iscsitest.Event) iscsitest.Action {
		if armed.Load() && ev.Header.Opcode() == pdu.OpSCSIDataOut {
			if n++; n == 2 {
				return iscsitest.BadDataDigest
			}
		}
		return iscsitest.Continue
	}
	tg := newTestTarget(t, iscsitest.Config{ErrorRecoveryLevel: 1, InitialR2T: true, MaxRecvDataSegmentLength: 64 << 10, Hook: hook})
	s, _ := erl1Session(t, tg, -1)
	armed.Store(true)
	ctx := interopCtx(t)
	data := randomData(t, 512<<10)
	if err := s.Write(ctx, 0, 8, 512, data); err != nil {
		t.Fatalf("write with a Data-Out rejected for its digest: %v", err)
	}
	if !bytes.Equal(tg.LUNData(0)[8*512:8*512+len(data)], data) {
		t.Fatal("the LUN does not hold what was written")
	}
	st, rs := tg.Stats(), recoveryStats(s)
	if rs.DataOutRejected != 1 || st.Resent != 1 || st.DigestErrors != 1 {
		t.Fatalf("initiator %+v; target digest errors %d, recovery R2Ts %d: want 1 each", rs, st.DigestErrors, st.Resent)
	}
	mustLogout(t, ctx, s)
}

// TestERL0DigestFailsConnection: the same Data-In corruption at ERL 0 (the
// target offers no more) fails the connection, as before ERL 1 existed.
func TestERL0DigestFailsConnection(t *testing.T) {
	for _, c := range []iscsitest.Corrupt{{Data: true}, {Header: true}} {
		var armed atomic.Bool
		fault := iscsitest.CorruptNth(func(h *pdu.BHS) bool { return armed.Load() && isDataIn(h) }, 1, c)
		tg := newTestTarget(t, iscsitest.Config{DigestFault: fault})
		s, _ := erl1Session(t, tg, -1)
		if erl := s.Params().ErrorRecoveryLevel; erl != 0 {
			t.Fatalf("negotiated ErrorRecoveryLevel %d with an ERL 0 target", erl)
		}
		conns := s.Conns()
		armed.Store(true)
		err := s.Read(interopCtx(t), 0, 0, 512, make([]byte, 64<<10))
		var de *pdu.DigestError
		if !errors.As(err, &de) || de.Data != c.Data {
			t.Fatalf("corrupt %+v at ERL 0: %v, want the digest error", c, err)
		}
		if n := tg.Stats().Received[pdu.OpSNACKRequest]; n != 0 {
			t.Fatalf("%d SNACKs at ERL 0", n)
		}
		select {
		case <-conns[0].Done():
		case <-time.After(10 * time.Second):
			t.Fatal("the connection did not end")
		}
	}
}

// TestERL1HostileSNACK: a target that never answers the Data SNACK, one
// that answers with the wrong DataSN, and one that rejects it: each fails
// the connection with ErrRecoveryFailed, within the SNACK's bound.
func TestERL1HostileSNACK(t *testing.T) {
	shortSNACKTimeout(t, 300*time.Millisecond)
	wrong := func(ev *iscsitest.Event) iscsitest.Action {
		sn, ok := ev.PDU.(*pdu.SNACKRequest)
		if !ok {
			return iscsitest.Continue
		}
		return iscsitest.Respond(&pdu.DataIn{ITT: sn.ITT, TTT: pdu.ReservedTag, DataSN: sn.BegRun + 7, BufferOffset: 0}, make([]byte, 512))
	}
	for name, hook := range map[string]iscsitest.Hook{
		"no answer":    iscsitest.When(iscsitest.OpcodeIs(pdu.OpSNACKRequest), iscsitest.Drop),
		"wrong DataSN": wrong,
		"rejected":     iscsitest.When(iscsitest.OpcodeIs(pdu.OpSNACKRequest), iscsitest.RejectWith(pdu.RejectSNACKReject)),
	} {
		t.Run(name, func(t *testing.T) {
			var armed atomic.Bool
			fault := iscsitest.CorruptNth(func(h *pdu.BHS) bool { return armed.Load() && isDataIn(h) }, 1, iscsitest.Corrupt{Data: true})
			tg := newTestTarget(t, iscsitest.Config{ErrorRecoveryLevel: 1, DigestFault: fault, Hook: hook})
			s, _ := erl1Session(t, tg, -1)
			armed.Store(true)
			start := time.Now()
			err := s.Read(interopCtx(t), 0, 0, 512, make([]byte, 64<<10))
			if !errors.Is(err, ErrRecoveryFailed) {
				t.Fatalf("read: %v, want ErrRecoveryFailed", err)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Fatalf("the failed recovery took %v", d)
			}
			if n := tg.Stats().Received[pdu.OpSNACKRequest]; n != 1 {
				t.Fatalf("%d SNACKs received, want 1", n)
			}
		})
	}
}
