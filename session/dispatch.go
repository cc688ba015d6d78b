package session

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/goiscsi/iscsi/pdu"
	"go.uber.org/zap"
)

// The read loop's side of a connection: what each PDU from the target does.
// dispatch does the bookkeeping every target PDU shares, then hands the PDU
// to the one handler of its opcode (the shape of x/net/http2's
// clientConnReadLoop); a handler's error is a protocol error, which ends
// the connection.

// dispatch handles one PDU from the target, its header read.
func (c *Conn) dispatch(h *pdu.BHS) error {
	if c.state() == connLoggedOut {
		// The Logout Response ended the connection's commands (RFC 7143
		// §11.14): status or data for them after it is not to be believed.
		// Discard it; the connection closes after the grace period.
		c.log.Debug("discarding a PDU after the Logout Response", zap.Stringer("op", h.Opcode()))
		return nil
	}
	op := h.Opcode()
	sn, status, ok := h.TargetSeq()
	if !ok || op == pdu.OpLoginResponse {
		return &pdu.ProtocolError{Op: op, Field: "Opcode", Value: uint64(op), Reason: "not allowed in full feature phase"}
	}
	// RFC 7143 §4.2.2: every target PDU carries the CmdSN window; StatSN
	// advances past those that carry status.
	c.s.updateWindow(sn.ExpCmdSN, sn.MaxCmdSN)
	if status {
		if c.erl1() {
			if err := c.statSNGap(sn.StatSN); err != nil {
				return err
			}
		}
		c.updateStatSN(sn.StatSN)
	}
	switch op {
	case pdu.OpSCSIDataIn:
		return c.processDataIn(h)
	case pdu.OpSCSIResponse:
		return c.processSCSIResponse(h)
	case pdu.OpR2T:
		return c.processR2T(h)
	case pdu.OpNOPIn:
		return c.processNOPIn(h)
	case pdu.OpTaskMgmtResponse:
		return c.processTMFResponse(h)
	case pdu.OpLogoutResponse:
		return c.processLogoutResponse(h)
	case pdu.OpTextResponse:
		return c.processTextResponse(h)
	case pdu.OpAsyncMessage:
		return c.processAsync(h)
	default: // pdu.OpReject, the one target opcode left
		return c.processReject(h)
	}
}

// processDataIn copies a Data-In's payload straight into its command's
// buffer, and completes the command if it carries status (§11.7).
func (c *Conn) processDataIn(h *pdu.BHS) error {
	var d pdu.DataIn
	if err := d.UnmarshalBHS(h); err != nil {
		return err
	}
	n := h.DataSegmentLength()
	t, err := c.answering(pdu.OpSCSIDataIn, d.ITT, taskSCSI)
	if err != nil || t == nil {
		if t == nil && err == nil {
			c.log.Debug("Data-In for an unknown task", zap.Uint32("itt", d.ITT))
		}
		return err
	}
	if t.writeLen > 0 {
		// Data-In answers a read (RFC 7143 §11.7): a write's status
		// comes in a SCSI Response, and no data comes back for it.
		return &pdu.ProtocolError{Op: pdu.OpSCSIDataIn, Field: "InitiatorTaskTag", Value: uint64(d.ITT), Reason: "Data-In for a write command"}
	}
	t.mu.Lock()
	if t.dead {
		t.mu.Unlock()
		return nil
	}
	// Every Data-In of a command counts, with data or not (RFC 7143 §11.7.5).
	if d.DataSN != t.dataSN && c.erl1() {
		// A gap (a Data-In whose header was skipped) is asked for;
		// Data-In past a gap already asked for, and resends already had,
		// are discarded (snack.go).
		var err error
		if pdu.SerialLess(t.dataSN, d.DataSN) {
			err = c.askData(t, t.dataSN)
		}
		t.mu.Unlock()
		return err
	}
	if d.DataSN != t.dataSN {
		t.mu.Unlock()
		return &pdu.ProtocolError{Op: pdu.OpSCSIDataIn, Field: "DataSN", Value: uint64(d.DataSN), Reason: fmt.Sprintf("expected %d", t.dataSN)}
	}
	if n > 0 {
		off := int(d.BufferOffset)
		switch {
		case off != t.received:
			t.mu.Unlock()
			return &pdu.ProtocolError{Op: pdu.OpSCSIDataIn, Field: "BufferOffset", Value: uint64(off), Reason: fmt.Sprintf("expected %d (DataPDUInOrder)", t.received)}
		case off+n > len(t.readBuf):
			t.mu.Unlock()
			return &pdu.ProtocolError{Op: pdu.OpSCSIDataIn, Field: "DataSegmentLength", Value: uint64(n), Reason: fmt.Sprintf("data past the expected length %d", len(t.readBuf))}
		}
		if c.as.inBatch && (c.as.src == nil || c.as.src.Buffered() < n) {
			// The data may have to be waited for: what completions
			// queued goes out first.
			c.endBatch()
		}
		if err := c.r.ReadData(t.readBuf[off : off+n]); err != nil {
			if c.recoverable(err, true) {
				// Discarded, and asked for again.
				c.snack.dataErrs.Add(1)
				err = c.askData(t, d.DataSN)
			}
			t.mu.Unlock()
			return err
		}
		t.received += n
	}
	t.dataSN++
	var held *dataGap
	if c.erl1() {
		held = c.dataIn(t, d.DataSN)
	}
	t.mu.Unlock()
	if held != nil {
		c.finishHeld(t, held)
		return nil
	}
	if d.HasStatus && t.call != nil {
		c.callStatus(t, pdu.RespCommandCompleted, d.Status, d.ResidualCount, d.Underflow, d.Overflow, nil)
		return nil
	}
	if d.HasStatus {
		t.complete(nil, func() {
			t.response, t.status = pdu.RespCommandCompleted, d.Status
			t.residual, t.under, t.over = d.ResidualCount, d.Underflow, d.Overflow
		})
	}
	return nil
}

// processSCSIResponse completes a command with its status and sense data
// (§11.4).
func (c *Conn) processSCSIResponse(h *pdu.BHS) error {
	var r pdu.SCSIResponse
	if err := r.UnmarshalBHS(h); err != nil {
		return err
	}
	data, lost, err := c.statusData(h)
	if err != nil || lost {
		return err
	}
	t, err := c.answering(pdu.OpSCSIResponse, r.ITT, taskSCSI)
	if err == nil && t != nil {
		// At ERL 1 a read's response waits for Data-In still missing.
		var held bool
		if held, err = c.holdResponse(t, &r, data); held {
			return nil
		}
	}
	switch {
	case err != nil:
		return err
	case t != nil && t.call != nil:
		c.callStatus(t, r.Response, r.Status, r.ResidualCount, r.Underflow, r.Overflow, senseOf(data))
	case t != nil:
		t.scsiResponse(&r, data)
	default:
		c.log.Debug("SCSI Response for an unknown task", zap.Uint32("itt", r.ITT))
	}
	return nil
}

// processR2T hands an R2T to the write that must answer it with Data-Out
// (§11.8).
func (c *Conn) processR2T(h *pdu.BHS) error {
	var r pdu.R2T
	if err := r.UnmarshalBHS(h); err != nil {
		return err
	}
	t, err := c.answering(pdu.OpR2T, r.ITT, taskSCSI)
	if err != nil || t == nil {
		if t == nil && err == nil {
			c.log.Debug("R2T for an unknown task", zap.Uint32("itt", r.ITT))
		}
		return err
	}
	if c.state() >= connLogoutSent {
		// The target may have sent it before it read our Logout Request:
		// no Data-Out may follow the request, so the write fails here and
		// the logout goes on.
		c.remove(t.itt)
		t.complete(fmt.Errorf("iscsi: R2T after the Logout Request, no data sent: %w", ErrLoggedOut), nil)
		return nil
	}
	off, n := uint64(r.BufferOffset), uint64(r.DesiredDataTransferLength)
	switch {
	case t.writeLen == 0:
		return &pdu.ProtocolError{Op: pdu.OpR2T, Field: "InitiatorTaskTag", Value: uint64(r.ITT), Reason: "R2T for a command that writes nothing"}
	case off >= uint64(t.writeLen):
		return &pdu.ProtocolError{Op: pdu.OpR2T, Field: "BufferOffset", Value: off, Reason: fmt.Sprintf("outside the %d bytes of the write", t.writeLen)}
	case n == 0 || off+n > uint64(t.writeLen):
		return &pdu.ProtocolError{Op: pdu.OpR2T, Field: "DesiredDataTransferLength", Value: n, Reason: fmt.Sprintf("range at offset %d outside the %d bytes of the write", off, t.writeLen)}
	case n > uint64(c.params.MaxBurstLength):
		return &pdu.ProtocolError{Op: pdu.OpR2T, Field: "DesiredDataTransferLength", Value: n, Reason: fmt.Sprintf("exceeds MaxBurstLength %d", c.params.MaxBurstLength)}
	}
	if c.erl1() {
		// ERL 1: a gap in R2TSN asks for the R2Ts missing (snack.go).
		if ok, err := c.r2tInOrder(t, &r); !ok || err != nil {
			return err
		}
	}
	if t.call != nil {
		return c.answerCallR2T(t, &r)
	}
	select {
	case t.r2ts <- r2tIn{r: r, c: c}:
		return nil
	default:
		return &pdu.ProtocolError{Op: pdu.OpR2T, Field: "R2TSN", Value: uint64(r.R2TSN), Reason: "more R2Ts outstanding than MaxOutstandingR2T"}
	}
}

// callStatus ends a Call's task with the target's status, on the reader
// (finishCall runs its Done here).
func (c *Conn) callStatus(t *task, response, status uint8, residual uint32, under, over bool, sense []byte) {
	if !t.fin.CompareAndSwap(false, true) {
		return
	}
	t.response, t.status, t.sense = response, status, sense
	t.residual, t.under, t.over = residual, under, over
	t.err = nil
	c.finishCall(t, true)
}

// answerCallR2T queues the Data-Out an R2T for a Call asks for. The reader
// does not write (endBatch writes it without waiting), and no goroutine
// waits for the R2T.
func (c *Conn) answerCallR2T(t *task, r *pdu.R2T) error {
	c.beginBatch()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.state() >= connLogoutSent {
		return nil // processR2T's own check raced a logout: it ends the task
	}
	off, n := int(r.BufferOffset), int(r.DesiredDataTransferLength)
	if err := c.appendDataOut(t, t.call.Cmd.Write, off, n, r.TTT); err != nil {
		c.w.Discard()
		return err
	}
	t.markSent(off, n)
	return nil
}

// processNOPIn completes the keepalive's NOP-Out it answers, and passes a
// target's ping (a TTT other than the reserved tag) to the keepalive
// goroutine, which answers it: the reader never writes (§11.19).
func (c *Conn) processNOPIn(h *pdu.BHS) error {
	var n pdu.NOPIn
	if err := n.UnmarshalBHS(h); err != nil {
		return err
	}
	data, lost, err := c.statusData(h)
	if err != nil || lost {
		return err
	}
	if n.ITT != pdu.ReservedTag && c.erl1() {
		// Every PDU sent before it is in: a write's lost last R2T shows.
		if err := c.probeR2Ts(); err != nil {
			return err
		}
	}
	if n.ITT != pdu.ReservedTag {
		t, err := c.answering(pdu.OpNOPIn, n.ITT, taskNOP)
		if err != nil {
			return err
		}
		if t != nil {
			c.remove(n.ITT)
			t.complete(nil, nil)
		}
	}
	if n.TTT != pdu.ReservedTag {
		c.answerPing(nopPing{ttt: n.TTT, lun: n.LUN, data: append([]byte(nil), data...)})
	}
	return nil
}

// processTMFResponse completes a task management request (§11.6).
func (c *Conn) processTMFResponse(h *pdu.BHS) error {
	var r pdu.TaskMgmtResponse
	if err := r.UnmarshalBHS(h); err != nil {
		return err
	}
	t, err := c.answering(pdu.OpTaskMgmtResponse, r.ITT, taskTMF)
	if err != nil || t == nil {
		return err
	}
	c.remove(r.ITT)
	t.complete(nil, func() { t.tmfResp = r.Response })
	return nil
}

// processLogoutResponse completes the connection's Logout Request (§11.15).
// On success the connection is over: its state says so before anyone sees
// it end, and the session too for reason 0.
func (c *Conn) processLogoutResponse(h *pdu.BHS) error {
	var r pdu.LogoutResponse
	if err := r.UnmarshalBHS(h); err != nil {
		return err
	}
	t, err := c.answering(pdu.OpLogoutResponse, r.ITT, taskLogout)
	if err != nil {
		return err
	}
	if t == nil {
		return &pdu.ProtocolError{Op: pdu.OpLogoutResponse, Field: "InitiatorTaskTag", Value: uint64(r.ITT), Reason: "no Logout Request with this tag"}
	}
	c.remove(r.ITT)
	if r.Response == pdu.LogoutSuccess && t.logoutReason != pdu.LogoutRemoveForRecovery {
		// Reason 2 removes another connection (connrecovery.go); this
		// one goes on. Otherwise the target closes the connection next: that end is the
		// logout's, not a reset, and the session is over before anyone
		// sees the connection go (Session.Ended).
		c.loggedOut()
		if t.logoutReason == pdu.LogoutCloseSession {
			c.s.markLoggedOut(LogoutResult{CID: c.cid, Reason: t.logoutReason, Responded: true,
				Time2Wait: r.Time2Wait, Time2Retain: r.Time2Retain})
		}
	}
	t.complete(nil, func() { t.logoutResp = r })
	return nil
}

// processTextResponse completes a Text Request with the text it carries
// (§11.11).
func (c *Conn) processTextResponse(h *pdu.BHS) error {
	var r pdu.TextResponse
	if err := r.UnmarshalBHS(h); err != nil {
		return err
	}
	data, lost, err := c.statusData(h)
	if err != nil || lost {
		return err
	}
	t, err := c.answering(pdu.OpTextResponse, r.ITT, taskText)
	if err != nil || t == nil {
		return err
	}
	c.remove(r.ITT)
	seg := append([]byte(nil), data...)
	t.complete(nil, func() { t.textResp, t.text = r, seg })
	return nil
}

// processAsync handles an Asynchronous Message (§11.9; async.go).
func (c *Conn) processAsync(h *pdu.BHS) error {
	var a pdu.AsyncMessage
	if err := a.UnmarshalBHS(h); err != nil {
		return err
	}
	data, lost, err := c.statusData(h)
	if err != nil || lost {
		return err
	}
	return c.asyncEvent(&a, data)
}

// processReject fails the request whose header the Reject carries (§11.17).
func (c *Conn) processReject(h *pdu.BHS) error {
	var rj pdu.Reject
	if err := rj.UnmarshalBHS(h); err != nil {
		return err
	}
	data, lost, err := c.statusData(h)
	if err != nil || lost {
		return err
	}
	if len(data) < pdu.BHSLen {
		return &pdu.ProtocolError{Op: pdu.OpReject, Field: "DataSegmentLength", Value: uint64(len(data)), Reason: "a Reject must carry the rejected header"}
	}
	var rh pdu.BHS
	copy(rh[:], data)
	c.log.Debug("target rejected a PDU", zap.Stringer("op", rh.Opcode()), zap.Stringer("reason", rj.Reason))
	if done, err := c.rejectedAtERL1(&rj, &rh); done {
		return err
	}
	if t := c.rejected(&rh); t != nil {
		c.remove(t.itt)
		t.complete(&RejectError{Reason: rj.Reason, Op: rh.Opcode()}, nil)
	}
	return nil
}

// answering returns the task a target PDU of opcode op carrying tag itt
// answers: nil for a tag no task has (the answer to a task given up may come
// late), and a protocol error for a task of another kind than want. A PDU
// of the wrong kind never completes a task: a SCSI Response carrying a
// Logout Request's tag does not make the logout a success.
func (c *Conn) answering(op pdu.Opcode, itt uint32, want taskKind) (*task, error) {
	t := c.lookup(itt)
	if t == nil || t.kind == want {
		return t, nil
	}
	return nil, &pdu.ProtocolError{Op: op, Field: "InitiatorTaskTag", Value: uint64(itt),
		Reason: fmt.Sprintf("is the tag of a %s, which a %s does not answer", requestOp[t.kind], op)}
}

// rejected returns the task whose request the header a Reject carries is:
// the same opcode, tag and (for a command) CmdSN. A Reject naming a request
// that is not ours, or no longer waits, is ignored: failing whatever task
// holds that tag now would fail a command the target executed.
func (c *Conn) rejected(rh *pdu.BHS) *task {
	itt := rh.ITT()
	if itt == pdu.ReservedTag {
		return nil
	}
	t := c.lookup(itt)
	if t == nil {
		return nil
	}
	op := rh.Opcode()
	if t.kind == taskSCSI && op == pdu.OpSCSIDataOut {
		// A Data-Out carries no CmdSN; its tag and kind name the write.
		if t.writeLen > 0 {
			return t
		}
		return nil
	}
	t.mu.Lock()
	sent, sn := t.sent, t.cmdSN
	t.mu.Unlock()
	if op != requestOp[t.kind] || !sent || rh.CmdSN() != sn {
		c.log.Debug("Reject names no request of ours", zap.Stringer("op", op), zap.Uint32("itt", itt), zap.Uint32("cmdsn", rh.CmdSN()))
		return nil
	}
	return t
}

// updateStatSN advances ExpStatSN past statSN; a StatSN going backwards is
// ignored.
func (c *Conn) updateStatSN(statSN uint32) {
	for {
		cur := c.expStatSN.Load()
		next := statSN + 1
		if !pdu.SerialLess(cur, next) {
			return
		}
		if c.expStatSN.CompareAndSwap(cur, next) {
			return
		}
	}
}

// readErr names how the stream ended.
func (c *Conn) readErr(err error) error {
	select {
	case <-c.closing:
		return ErrClosed
	default:
	}
	if c.state() == connLoggedOut {
		// The target closes the connection after a successful Logout
		// Response: that end is the logout's (and, with thousands of
		// sessions logging out at once, one error value for all).
		return ErrLoggedOut
	}
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		// Only a command that gave up sets a deadline inside a PDU.
		return fmt.Errorf("iscsi: the target stalled in the middle of a PDU for %v after its command gave up: %w: %w", readCancelGrace, ErrConnReset, err)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, net.ErrClosed):
		// Both stay matchable: errors.Is(err, syscall.ECONNRESET) tells a
		// reset from a close.
		return fmt.Errorf("%w: %w", ErrConnReset, err)
	}
	return err
}
