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
//   - A status PDU (SCSI Response, NOP-In answering a NOP-Out, Text
//     Response, Reject, Asynchronous Message) whose data digest failed:
//     discarded, and asked for again with a Status SNACK for its StatSN
//     (§7.8: "a response PDU or an unsolicited PDU ... status SNACK"). A
//     NOP-In ping (reserved ITT) carries no StatSN of its own and cannot be
//     asked for again: its data digest error fails the connection.
//   - A gap in a write's R2TSN (an R2T whose header was skipped, found by
//     the next R2T): an R2T SNACK (type 0 on the write's tag) from the
//     first missing R2TSN with RunLength 0. R2Ts past the gap are
//     discarded and answered when the target sends them again, so the
//     write's sequences still go out in order (DataSequenceInOrder). The
//     last R2T of a write has no later R2T to reveal it: after a header was
//     skipped, the next NOP-In answering a NOP-Out (the one probeAfterSkip
//     sends, or the keepalive's: every PDU the target sent before it has
//     been read) makes each waiting write
//     ask for its next R2T with a probe R2T SNACK; the target resends it,
//     or rejects a SNACK for an R2T it never sent, which ends the probe.
//   - A Reject "data digest error" of a Data-Out: informational. The
//     target discarded the data and asks for it again with a recovery R2T
//     (§7.8), which the write answers as any R2T; the command is not failed.
//   - A Reject "data digest error" of a SCSI Command: the target discarded
//     the command, its immediate data and its CmdSN (§7.8), so the command
//     is retried (§7.2.1): the same PDU, same ITT, CmdSN, flags, CDB and
//     immediate data, on the same connection, followed by its unsolicited
//     Data-Out ("the entire data transfer for the task"). RFC 7143 has no
//     retry flag: a retry is the original PDU sent again. Rejects of the
//     first attempt's unsolicited Data-Out (the target knew no task for
//     them) are ignored. At most maxRetries retries; then the command fails
//     with the Reject.
//
// Each SNACK waits for what it asked for for the SNACK timeout
// (Config.SNACKTimeout, default snackTimeout); a target that does not
// answer in time, rejects the SNACK, or answers something else, loses the
// connection (ErrRecoveryFailed), as at ERL 0: session recovery, if
// configured, takes over from there. A header digest error right after a
// skipped header (the skip landed wrong), or a data digest error on a PDU
// that cannot be asked for again, fails the connection too.
//
// Not built: a lost status or R2T that no later PDU reveals while the
// keepalive is off (the command's context ends it).

// ErrRecoveryFailed is wrapped by the error of a connection whose
// within-connection recovery (ErrorRecoveryLevel 1) failed: the target did
// not answer a SNACK in time, or rejected it.
var ErrRecoveryFailed = errors.New("iscsi: within-connection recovery (SNACK) failed")

// snackTimeout bounds how long a SNACK waits for what it asked for when
// Config.SNACKTimeout is not set. Tests shorten it before a session starts.
var snackTimeout = 5 * time.Second

// snackWait is how long a SNACK of c waits for what it asked for.
func (c *Conn) snackWait() time.Duration {
	if d := c.s.cfg.SNACKTimeout; d > 0 {
		return d
	}
	return snackTimeout
}

// maxRetries bounds how often one command is retried after Rejects for
// its data digest.
const maxRetries = 3

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
	// StatusDataErrors counts status PDUs discarded for their data digest
	// (each asked for again with a Status SNACK, counted in StatusSNACKs).
	StatusDataErrors uint64
	// R2TSNACKs counts the R2T SNACKs sent (probes for a write's last R2T
	// included); R2TProbes the probes among them.
	R2TSNACKs, R2TProbes uint64
	// CommandRetries counts SCSI Commands sent again after the target
	// rejected them for their data digest.
	CommandRetries uint64
}

// snackState is a connection's within-connection recovery.
type snackState struct {
	mu sync.Mutex // guards gaps and status
	// gaps are the commands whose Data-In are asked for again, by ITT.
	gaps map[uint32]*dataGap
	// status are the StatSNs a Status SNACK asked for, and its timer.
	status      map[uint32]bool
	statusTimer *time.Timer

	// r2ts are the writes whose R2Ts are asked for again, by ITT.
	r2ts map[uint32]*r2tGap
	// retries are the commands retried, by ITT, and how often.
	retries map[uint32]*retry
	// skipped says a header was skipped since the last R2T probe; only
	// the reader touches it.
	skipped bool
	// ping is the NOP-Out sent after a header was skipped (probeAfterSkip)
	// and pingTimer its bound; under mu.
	ping      *task
	pingTimer *time.Timer

	dataSNACKs, statusSNACKs, dataErrs, headers, doutRejects atomic.Uint64
	statusErrs, r2tSNACKs, r2tProbes, cmdRetries             atomic.Uint64
}

// r2tGap is a write's missing R2Ts: from begRun on, asked for. probe says
// nothing showed them lost (a probe for the last R2T): a Reject of the
// SNACK then only ends the wait.
type r2tGap struct {
	t      *task
	begRun uint32
	probe  bool
	timer  *time.Timer
}

// retry is a command sent again after a Reject for its data digest.
type retry struct {
	t *task
	n int
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
		DataDigestErrors: st.dataErrs.Load(), HeadersSkipped: st.headers.Load(), DataOutRejected: st.doutRejects.Load(),
		StatusDataErrors: st.statusErrs.Load(), R2TSNACKs: st.r2tSNACKs.Load(), R2TProbes: st.r2tProbes.Load(),
		CommandRetries: st.cmdRetries.Load()}
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
	c.snack.skipped = true
	c.log.Debug("PDU discarded: header digest error", zap.Error(err))
	if itt, ok := c.movedWriteUnsynced(); ok {
		// The PDU may have been that write's first recovery R2T. Those
		// start at the target's next unused R2TSN (RFC 7143 §2.2), which
		// only that R2T tells: neither a later R2T (taken for the first,
		// the data the lost one asked for would never go) nor an R2T
		// SNACK (from which number?) can recover it. The connection
		// fails instead, and connection recovery moves the write again:
		// the target then asks again for all it has not received.
		c.fail(fmt.Errorf("%w: header digest error while write %#x, moved by TASK REASSIGN, waited for its first R2T", ErrRecoveryFailed, itt))
		return true
	}
	if err := c.probeAfterSkip(); err != nil {
		c.fail(err)
	}
	return true
}

// movedWriteUnsynced reports a write on c that a TASK REASSIGN moved here
// and that has had no R2T yet (its R2TSN unknown), and its tag.
func (c *Conn) movedWriteUnsynced() (uint32, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range c.tasks {
		if t.kind == taskSCSI && t.writeLen > 0 && t.r2tResync && !t.fin.Load() {
			return t.itt, true
		}
	}
	return 0, false
}

// probeAfterSkip sends a NOP-Out ping after a header skipped at ERL 1.
// What the lost PDU carried shows only when a later PDU reveals a gap (in
// StatSN, DataSN or R2TSN), and a target that sends nothing more would
// leave its command to its caller's context alone, the keepalive off. The
// NOP-In answering the ping carries the StatSN (a status lost shows as a
// gap: Status SNACK) and makes waiting writes probe for their next R2T
// (probeR2Ts); not answered within the SNACK timeout, the connection fails
// with ErrRecoveryFailed. One ping at a time.
func (c *Conn) probeAfterSkip() error {
	st := &c.snack
	st.mu.Lock()
	if st.ping != nil && !st.ping.fin.Load() {
		st.mu.Unlock()
		return nil
	}
	t := c.s.newTask(taskNOP)
	if err := c.register(t, false); err != nil {
		st.mu.Unlock()
		return nil // the connection no longer takes requests: it is ending
	}
	st.ping = t
	if st.pingTimer != nil {
		st.pingTimer.Stop()
	}
	st.pingTimer = time.AfterFunc(c.snackWait(), func() {
		c.snackExpired("NOP-Out sent after a header digest error", func() bool { return !t.fin.Load() })
	})
	st.mu.Unlock()
	out := &pdu.NOPOut{Immediate: true, ITT: t.itt, TTT: pdu.ReservedTag, CmdSN: c.s.currentCmdSN()}
	t.setRequest(out.CmdSN)
	c.log.Debug("sending a NOP-Out after a header digest error", zap.Uint32("itt", t.itt))
	return c.sendOnReader(out, &out.ExpStatSN)
}

// sendSNACK sends a SNACK from the reader (sendOnReader).
func (c *Conn) sendSNACK(sn *pdu.SNACKRequest) error {
	return c.sendOnReader(sn, &sn.ExpStatSN)
}

// sendOnReader sends p, a request without data, from the reader: queued in
// the reader's batch, which goes out at once, without waiting (endBatch),
// its ExpStatSN field (expStatSN) set as it is queued. It is not left for
// the batch's end: the reader may next skip data segments already
// buffered, then wait for a header, with p still queued.
func (c *Conn) sendOnReader(p pdu.PDU, expStatSN *uint32) error {
	c.beginBatch()
	c.wmu.Lock()
	*expStatSN = c.expStatSN.Load()
	err := c.w.Append(p, nil, nil)
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
	g.timer = time.AfterFunc(c.snackWait(), func() {
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
	st.mu.Unlock()
	if !pdu.SerialLess(exp, statSN) || statSN-exp > maxStatusRun {
		// In order, a resend, or a jump too large to ask for: the latter
		// is left to the command's own deadline.
		return nil
	}
	return c.askStatus(exp, statSN-exp)
}

// askStatus asks for the status PDUs of StatSN begRun on, runLength of
// them, with a Status SNACK, and waits for them.
func (c *Conn) askStatus(begRun, runLength uint32) error {
	st := &c.snack
	st.mu.Lock()
	if st.status == nil {
		st.status = make(map[uint32]bool)
	}
	for sn := begRun; sn != begRun+runLength; sn++ {
		st.status[sn] = true
	}
	if st.statusTimer == nil {
		st.statusTimer = time.AfterFunc(c.snackWait(), func() {
			c.snackExpired(fmt.Sprintf("Status SNACK from StatSN %d", begRun), func() bool {
				st.mu.Lock()
				defer st.mu.Unlock()
				return len(st.status) > 0
			})
		})
	}
	st.mu.Unlock()
	st.statusSNACKs.Add(1)
	c.log.Debug("sending Status SNACK", zap.Uint32("begRun", begRun), zap.Uint32("runLength", runLength))
	return c.sendSNACK(&pdu.SNACKRequest{Type: pdu.SNACKStatus, ITT: pdu.ReservedTag, TTT: pdu.ReservedTag, BegRun: begRun, RunLength: runLength})
}

// statusData reads the data segment of status PDU h. At ERL 1 a data
// digest error discards the PDU and asks for it again with a Status SNACK
// for its StatSN: lost reports it, and the caller drops the PDU. A PDU
// that carries no StatSN of its own (a NOP-In ping) cannot be asked for
// again: its digest error is returned, and fails the connection.
func (c *Conn) statusData(h *pdu.BHS) (data []byte, lost bool, err error) {
	data, err = c.r.Data()
	if err == nil || !c.recoverable(err, true) {
		return data, false, err
	}
	sn, status, _ := h.TargetSeq()
	if !status {
		return nil, false, fmt.Errorf("iscsi: %s without a StatSN of its own (a target's ping) failed its data digest and cannot be asked for again: %w", h.Opcode(), err)
	}
	c.snack.statusErrs.Add(1)
	c.log.Debug("status PDU discarded: data digest error", zap.Stringer("op", h.Opcode()), zap.Uint32("statSN", sn.StatSN))
	return nil, true, c.askStatus(sn.StatSN, 1)
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
	c.fail(fmt.Errorf("%w: no answer to the %s within %v", ErrRecoveryFailed, what, c.snackWait()))
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
	for itt, g := range st.r2ts {
		g.timer.Stop()
		delete(st.r2ts, itt)
	}
	clear(st.retries)
	if st.pingTimer != nil {
		st.pingTimer.Stop()
		st.pingTimer = nil
	}
}

// rejectedAtERL1 handles a Reject that within-connection recovery
// answers: a SNACK rejected ends the recovery (the connection fails),
// unless it was a probe for an R2T the target never sent; a Data-Out
// rejected for its data digest is told, and the target's recovery R2T asks
// for the data again; a SCSI Command rejected for its data digest is
// retried. It reports whether it handled rj.
func (c *Conn) rejectedAtERL1(rj *pdu.Reject, rh *pdu.BHS) (bool, error) {
	if !c.erl1() {
		return false, nil
	}
	switch op := rh.Opcode(); {
	case op == pdu.OpSNACKRequest:
		if c.probeRejected(rh) {
			return true, nil
		}
		return true, fmt.Errorf("%w: the target rejected a SNACK (%s)", ErrRecoveryFailed, rj.Reason)
	case op == pdu.OpSCSIDataOut && rj.Reason == pdu.RejectDataDigestError:
		c.snack.doutRejects.Add(1)
		c.log.Debug("target rejected a Data-Out for its data digest: waiting for its recovery R2T", zap.Uint32("itt", rh.ITT()))
		return true, nil
	case op == pdu.OpSCSIDataOut && c.retrying(rh.ITT()) != nil:
		// Unsolicited data of the attempt the target discarded.
		c.log.Debug("target rejected a Data-Out of a command it discarded", zap.Uint32("itt", rh.ITT()), zap.Stringer("reason", rj.Reason))
		return true, nil
	case op == pdu.OpSCSICommand && rj.Reason == pdu.RejectDataDigestError:
		t := c.rejected(rh)
		if t == nil {
			return true, nil // not a command of ours that waits
		}
		return c.retryCommand(t)
	}
	return false, nil
}

// retrying returns the command of tag itt being retried, nil if none.
func (c *Conn) retrying(itt uint32) *task {
	st := &c.snack
	st.mu.Lock()
	defer st.mu.Unlock()
	if r := st.retries[itt]; r != nil && c.lookup(itt) == r.t {
		return r.t
	}
	return nil
}

// retryCommand sends command t again, as it first went (§7.2.1), from
// the reader: queued in its batch. After maxRetries it is failed with
// the Reject, as at ERL 0: it reports false, and processReject fails it.
func (c *Conn) retryCommand(t *task) (bool, error) {
	st := &c.snack
	st.mu.Lock()
	if st.retries == nil {
		st.retries = make(map[uint32]*retry)
	}
	for itt, r := range st.retries {
		if c.lookup(itt) != r.t {
			delete(st.retries, itt) // ended
		}
	}
	r := st.retries[t.itt]
	if r == nil || r.t != t {
		r = &retry{t: t}
		st.retries[t.itt] = r
	}
	r.n++
	n := r.n
	st.mu.Unlock()
	if n > maxRetries {
		return false, nil
	}
	cmd := t.command()
	if cmd == nil {
		return false, nil
	}
	st.cmdRetries.Add(1)
	t.mu.Lock()
	sn := t.cmdSN
	t.mu.Unlock()
	c.log.Debug("retrying a command the target rejected for its data digest", zap.Uint32("itt", t.itt), zap.Uint32("cmdsn", sn))
	c.beginBatch()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.state() >= connLogoutSent {
		return true, nil // the logout ends the task
	}
	if _, err := c.queueCommand(t, cmd, sn); err != nil {
		c.w.Discard()
		return true, fmt.Errorf("iscsi: building a retried SCSI Command: %w", err)
	}
	return true, nil
}

// r2tInOrder is told of R2T r for write t at ERL 1 and reports whether
// the write answers it: the next R2TSN is; an R2T past a gap asks for the
// missing ones with an R2T SNACK and is discarded (the target sends it
// again after them); one already had (a resend) is discarded. Only the
// reader touches t.r2tSN.
func (c *Conn) r2tInOrder(t *task, r *pdu.R2T) (bool, error) {
	switch {
	case t.r2tResync:
		// The first R2T of a write moved by TASK REASSIGN: the R2Ts
		// of the lost connection that never came are not sent again
		// (the recovery R2Ts ask for all the data not yet received),
		// so its R2TSN is the new start, not a gap.
		t.r2tResync = false
		t.r2tSN = r.R2TSN + 1
		return true, nil
	case r.R2TSN == t.r2tSN:
		t.r2tSN++
		c.r2tArrived(t, r.R2TSN)
		return true, nil
	case pdu.SerialLess(r.R2TSN, t.r2tSN):
		return false, nil
	}
	return false, c.askR2T(t, t.r2tSN, false)
}

// r2tArrived closes t's R2T gap when the R2T it asked for first came.
func (c *Conn) r2tArrived(t *task, sn uint32) {
	st := &c.snack
	st.mu.Lock()
	defer st.mu.Unlock()
	if g := st.r2ts[t.itt]; g != nil && g.t == t && g.begRun == sn {
		g.timer.Stop()
		delete(st.r2ts, t.itt)
	}
}

// askR2T asks for t's R2Ts from begRun on with an R2T SNACK (a Data SNACK
// on a write's tag, RFC 7143 §11.16), unless it already has; probe says
// nothing showed them lost.
func (c *Conn) askR2T(t *task, begRun uint32, probe bool) error {
	st := &c.snack
	st.mu.Lock()
	if st.r2ts == nil {
		st.r2ts = make(map[uint32]*r2tGap)
	}
	g := st.r2ts[t.itt]
	if g != nil && g.t == t && g.begRun == begRun {
		g.probe = g.probe && probe // a gap seen makes a probe a loss
		st.mu.Unlock()
		return nil
	}
	if g != nil {
		g.timer.Stop()
	}
	g = &r2tGap{t: t, begRun: begRun, probe: probe}
	st.r2ts[t.itt] = g
	itt := t.itt
	g.timer = time.AfterFunc(c.snackWait(), func() {
		c.snackExpired(fmt.Sprintf("R2T SNACK for task %#x from R2TSN %d", itt, begRun), func() bool {
			st.mu.Lock()
			defer st.mu.Unlock()
			return st.r2ts[itt] == g
		})
	})
	st.mu.Unlock()
	st.r2tSNACKs.Add(1)
	if probe {
		st.r2tProbes.Add(1)
	}
	c.log.Debug("sending R2T SNACK", zap.Uint32("itt", itt), zap.Uint32("begRun", begRun), zap.Bool("probe", probe))
	return c.sendSNACK(&pdu.SNACKRequest{Type: pdu.SNACKData, LUN: t.lun, ITT: itt, TTT: pdu.ReservedTag, BegRun: begRun})
}

// probeR2Ts runs when a NOP-In answers a NOP-Out at ERL 1: if a header was
// skipped since the last probe, it may have been a write's last R2T, which
// no later R2T reveals; every PDU the target sent before the NOP-In has
// been read, so each write still waiting asks for its next R2T.
func (c *Conn) probeR2Ts() error {
	if !c.snack.skipped {
		return nil
	}
	c.snack.skipped = false
	c.mu.Lock()
	var writes []*task
	for _, t := range c.tasks {
		if t.kind == taskSCSI && t.writeLen > 0 && !t.fin.Load() && !t.r2tResync {
			// (A moved write that has had no R2T here yet has no
			// R2TSN to ask for: its first R2T sets it.)
			writes = append(writes, t)
		}
	}
	c.mu.Unlock()
	for _, t := range writes {
		if err := c.askR2T(t, t.r2tSN, true); err != nil {
			return err
		}
	}
	return nil
}

// probeRejected reports whether the SNACK header rh a Reject carries is
// an R2T probe: the target did not send that R2T (yet), nothing was lost,
// and the probe ends.
func (c *Conn) probeRejected(rh *pdu.BHS) bool {
	p, err := pdu.Decode(rh)
	sn, ok := p.(*pdu.SNACKRequest)
	if err != nil || !ok || sn.Type != pdu.SNACKData {
		return false
	}
	st := &c.snack
	st.mu.Lock()
	defer st.mu.Unlock()
	g := st.r2ts[sn.ITT]
	if g == nil || !g.probe || g.begRun != sn.BegRun {
		return false
	}
	g.timer.Stop()
	delete(st.r2ts, sn.ITT)
	c.log.Debug("R2T probe rejected: nothing lost", zap.Uint32("itt", sn.ITT))
	return true
}
