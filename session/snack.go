package session

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/goiscsi/iscsi/pdu"
	"go.uber.org/zap"
)

// Within-connection recovery, ErrorRecoveryLevel 1 (RFC 7143 §7.1.4.1,
// §11.16). At ERL 1 the Reader leaves the stream in step after a data
// digest error, and skips a PDU whose header digest failed once
// (pdu.ReaderConfig.DataDigestInStep, SkipBadHeader). What was lost is then
// asked for again:
//
//   - A Data-In whose data digest failed, or a gap in a command's DataSN (a
//     Data-In whose header was skipped, found by the next Data-In or by the
//     SCSI Response's ExpDataSN): a Data SNACK (type 0) from the first
//     missing DataSN with RunLength 0, "every Data-In from BegRun". Data-In
//     of the command already on their way past the gap are discarded; the
//     target sends them again after the one asked for, so the data goes on
//     arriving in order (DataPDUInOrder holds). A SCSI Response that comes
//     while data is missing waits until it is all in.
//   - A gap in StatSN (a status PDU whose header was skipped, found by the
//     next status PDU): a Status SNACK (type 1) for the missing run.
//   - A Reject "data digest error" of a Data-Out: informational. The
//     target discarded the data and asks for it again with a recovery R2T
//     (§7.8), which the write answers as any R2T; the command is not failed.
//
// Each SNACK waits snackTimeout for what it asked for; a target that does
// not answer in time, rejects the SNACK, or answers something else, loses
// the connection (ErrRecoveryFailed), as at ERL 0: session recovery, if
// configured, takes over from there. A header digest error right after a
// skipped header (the skip landed wrong), or a digest error on any PDU
// other than Data-In, fails the connection too.
//
// Not built: R2T SNACK (a lost R2T is found only by the command's context),
// resending a SCSI Command whose immediate data the target rejected, and a
// lost status that no later status PDU reveals (the keepalive's NOP-In, a
// status PDU, reveals it).

// ErrRecoveryFailed is wrapped by the error of a connection whose
// within-connection recovery (ErrorRecoveryLevel 1) failed: the target did
// not answer a SNACK in time, or rejected it.
var ErrRecoveryFailed = errors.New("iscsi: within-connection recovery (SNACK) failed")

// snackTimeout bounds how long a SNACK waits for what it asked for. Tests
// shorten it before a session starts.
var snackTimeout = 5 * time.Second

// readerConfig is the Reader's configuration for a logged-in connection:
// at ERL 1 and up a digest error need not end the stream.
func readerConfig(p Params) pdu.ReaderConfig {
	erl1 := p.ErrorRecoveryLevel >= 1
	return pdu.ReaderConfig{From: pdu.FromTarget, MaxDataSegmentLength: p.MaxRecvDataSegmentLength,
		HeaderDigest: p.HeaderDigest, DataDigest: p.DataDigest,
		DataDigestInStep: erl1 && p.DataDigest, SkipBadHeader: erl1 && p.HeaderDigest}
}

// RecoveryStats counts a connection's within-connection recovery.
type RecoveryStats struct {
	// DataSNACKs and StatusSNACKs are the SNACKs sent.
	DataSNACKs, StatusSNACKs uint64
	// DataDigestErrors counts Data-In discarded for their data digest;
	// HeadersSkipped PDUs discarded for their header digest.
	DataDigestErrors, HeadersSkipped uint64
	// DataOutRejected counts Data-Out the target rejected for their data
	// digest (it asks for them again with a recovery R2T).
	DataOutRejected uint64
}

// snackState is a connection's within-connection recovery.
type snackState struct {
	mu sync.Mutex // guards gaps and status
	// gaps are the commands whose Data-In are asked for again, by ITT.
	gaps map[uint32]*dataGap
	// status are the StatSNs a Status SNACK asked for, and its timer.
	status      map[uint32]bool
	statusTimer *time.Timer

	dataSNACKs, statusSNACKs, dataErrs, headers, doutRejects atomic.Uint64
}

// dataGap is a command's missing Data-In: from begRun on, asked for.
type dataGap struct {
	t      *task
	begRun uint32
	timer  *time.Timer
	// resp is a SCSI Response that came while data was missing, and its
	// data segment: it completes the command once DataSN reaches
	// resp.ExpDataSN.
	resp  *pdu.SCSIResponse
	sense []byte
}

// RecoveryStats returns the connection's within-connection recovery counts.
func (c *Conn) RecoveryStats() RecoveryStats {
	st := &c.snack
	return RecoveryStats{DataSNACKs: st.dataSNACKs.Load(), StatusSNACKs: st.statusSNACKs.Load(),
		DataDigestErrors: st.dataErrs.Load(), HeadersSkipped: st.headers.Load(), DataOutRejected: st.doutRejects.Load()}
}

// erl1 reports within-connection recovery on.
func (c *Conn) erl1() bool { return c.params.ErrorRecoveryLevel >= 1 }

// recoverable reports a read error after which the stream is in step at
// ERL 1: a data digest error, or a header skipped.
func (c *Conn) recoverable(err error, data bool) bool {
	var de *pdu.DigestError
	return c.erl1() && errors.As(err, &de) && de.Data == data && c.r.Failed() == nil
}

// headerSkipped handles Next's error if it is a header skipped for its
// digest: the PDU is gone, and what it carried is found missing later.
func (c *Conn) headerSkipped(err error) bool {
	if !c.recoverable(err, false) {
		return false
	}
	c.snack.headers.Add(1)
	c.log.Debug("PDU discarded: header digest error", zap.Error(err))
	return true
}

// sendSNACK sends a SNACK from the reader: queued in the reader's batch,
// which goes out at once, without waiting (endBatch). It is not left for
// the batch's end: the reader may next skip data segments already
// buffered, then wait for a header, with the SNACK still queued.
func (c *Conn) sendSNACK(sn *pdu.SNACKRequest) error {
	c.beginBatch()
	c.wmu.Lock()
	sn.ExpStatSN = c.expStatSN.Load()
	err := c.w.Append(sn, nil, nil)
	if err != nil {
		c.w.Discard()
	}
	c.wmu.Unlock()
	c.endBatch()
	return err
}

// askData asks for t's Data-In from begRun on, unless it already has;
// the caller holds t.mu.
func (c *Conn) askData(t *task, begRun uint32) error {
	st := &c.snack
	st.mu.Lock()
	if st.gaps == nil {
		st.gaps = make(map[uint32]*dataGap)
	}
	g := st.gaps[t.itt]
	if g != nil && g.t == t && g.begRun == begRun {
		st.mu.Unlock()
		return nil
	}
	if g == nil || g.t != t {
		g = &dataGap{t: t}
		st.gaps[t.itt] = g
	} else {
		g.timer.Stop()
	}
	g.begRun = begRun
	itt := t.itt
	g.timer = time.AfterFunc(snackTimeout, func() {
		c.snackExpired(fmt.Sprintf("Data SNACK for task %#x from DataSN %d", itt, begRun), func() bool {
			st.mu.Lock()
			defer st.mu.Unlock()
			return st.gaps[itt] == g
		})
	})
	st.mu.Unlock()
	st.dataSNACKs.Add(1)
	c.log.Debug("sending Data SNACK", zap.Uint32("itt", itt), zap.Uint32("begRun", begRun))
	return c.sendSNACK(&pdu.SNACKRequest{Type: pdu.SNACKData, LUN: t.lun, ITT: itt, TTT: pdu.ReservedTag, BegRun: begRun})
}

// gapOf returns t's open data gap, nil when none; the caller holds t.mu.
func (c *Conn) gapOf(t *task) *dataGap {
	st := &c.snack
	st.mu.Lock()
	defer st.mu.Unlock()
	if g := st.gaps[t.itt]; g != nil && g.t == t {
		return g
	}
	return nil
}

// dataIn is told that t accepted Data-In dataSN (t.dataSN is past it); it
// closes t's gap when the data asked for is in, and returns a SCSI Response
// that waited for it, to complete the command with. The caller holds t.mu.
func (c *Conn) dataIn(t *task, dataSN uint32) *dataGap {
	st := &c.snack
	st.mu.Lock()
	defer st.mu.Unlock()
	g := st.gaps[t.itt]
	if g == nil || g.t != t {
		return nil
	}
	if g.resp != nil {
		if t.dataSN != g.resp.ExpDataSN {
			return nil
		}
	} else if dataSN != g.begRun {
		return nil
	}
	g.timer.Stop()
	delete(st.gaps, t.itt)
	if g.resp != nil {
		return g
	}
	return nil
}

// holdResponse keeps a SCSI Response for a read whose Data-In are missing
// (a gap is open, or ExpDataSN says some never came) until they are in. It
// reports whether it did.
func (c *Conn) holdResponse(t *task, r *pdu.SCSIResponse, data []byte) (bool, error) {
	if !c.erl1() || t.writeLen > 0 || len(t.readBuf) == 0 {
		return false, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	g := c.gapOf(t)
	if g == nil {
		if !pdu.SerialLess(t.dataSN, r.ExpDataSN) || r.Status != pdu.StatusGood {
			return false, nil
		}
		if err := c.askData(t, t.dataSN); err != nil {
			return false, err
		}
		g = c.gapOf(t)
	}
	resp := *r
	g.resp, g.sense = &resp, append([]byte(nil), data...)
	return true, nil
}

// finishHeld completes t with the SCSI Response that waited for its data.
func (c *Conn) finishHeld(t *task, g *dataGap) {
	if t.call != nil {
		c.callStatus(t, g.resp.Response, g.resp.Status, g.resp.ResidualCount, g.resp.Underflow, g.resp.Overflow, senseOf(g.sense))
		return
	}
	t.scsiResponse(g.resp, g.sense)
}

// statSNGap is told of a status PDU with statSN while ExpStatSN is exp: a
// gap asks for the missing run with a Status SNACK; a status asked for
// that came closes the wait.
func (c *Conn) statSNGap(statSN uint32) error {
	exp := c.expStatSN.Load()
	st := &c.snack
	st.mu.Lock()
	if st.status[statSN] {
		delete(st.status, statSN)
		if len(st.status) == 0 && st.statusTimer != nil {
			st.statusTimer.Stop()
			st.statusTimer = nil
		}
	}
	if !pdu.SerialLess(exp, statSN) || statSN-exp > maxStatusRun {
		// In order, a resend, or a jump too large to ask for: the latter
		// is left to the command's own deadline.
		st.mu.Unlock()
		return nil
	}
	if st.status == nil {
		st.status = make(map[uint32]bool)
	}
	for sn := exp; sn != statSN; sn++ {
		st.status[sn] = true
	}
	if st.statusTimer == nil {
		st.statusTimer = time.AfterFunc(snackTimeout, func() {
			c.snackExpired(fmt.Sprintf("Status SNACK from StatSN %d", exp), func() bool {
				st.mu.Lock()
				defer st.mu.Unlock()
				return len(st.status) > 0
			})
		})
	}
	st.mu.Unlock()
	st.statusSNACKs.Add(1)
	c.log.Debug("sending Status SNACK", zap.Uint32("begRun", exp), zap.Uint32("runLength", statSN-exp))
	return c.sendSNACK(&pdu.SNACKRequest{Type: pdu.SNACKStatus, ITT: pdu.ReservedTag, TTT: pdu.ReservedTag, BegRun: exp, RunLength: statSN - exp})
}

// maxStatusRun is the longest StatSN gap asked for with a Status SNACK.
const maxStatusRun = 64

// snackExpired fails the connection when a SNACK's wait ran out and still
// waits.
func (c *Conn) snackExpired(what string, waiting func() bool) {
	select {
	case <-c.closing:
		return
	default:
	}
	if !waiting() {
		return
	}
	c.fail(fmt.Errorf("%w: no answer to the %s within %v", ErrRecoveryFailed, what, snackTimeout))
}

// stopSNACKs stops the SNACKs' timers of a connection that ended.
func (c *Conn) stopSNACKs() {
	st := &c.snack
	st.mu.Lock()
	defer st.mu.Unlock()
	for itt, g := range st.gaps {
		g.timer.Stop()
		delete(st.gaps, itt)
	}
	if st.statusTimer != nil {
		st.statusTimer.Stop()
		st.statusTimer = nil
	}
}

// rejectedAtERL1 handles a Reject that within-connection recovery
// answers: a SNACK rejected ends the recovery (the connection fails); a
// Data-Out rejected for its data digest is told, and the target's
// recovery R2T asks for the data again. It reports whether it handled rj.
func (c *Conn) rejectedAtERL1(rj *pdu.Reject, rh *pdu.BHS) (bool, error) {
	if !c.erl1() {
		return false, nil
	}
	switch {
	case rh.Opcode() == pdu.OpSNACKRequest:
		return true, fmt.Errorf("%w: the target rejected a SNACK (%s)", ErrRecoveryFailed, rj.Reason)
	case rh.Opcode() == pdu.OpSCSIDataOut && rj.Reason == pdu.RejectDataDigestError:
		c.snack.doutRejects.Add(1)
		c.log.Debug("target rejected a Data-Out for its data digest: waiting for its recovery R2T", zap.Uint32("itt", rh.ITT()))
		return true, nil
	}
	return false, nil
}
