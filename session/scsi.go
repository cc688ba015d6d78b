package session

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/goiscsi/iscsi/pdu"
	"go.uber.org/zap"
)

// Command is one SCSI command. At most one of Read and Write is set.
type Command struct {
	LUN int
	// CDB is the command descriptor block, at most 16 bytes.
	CDB []byte
	// Read receives the data the target returns; its length is the
	// expected transfer length.
	Read []byte
	// Write is the data sent to the target. It must not change until
	// Execute returns.
	Write []byte
	// Attr is the task attribute; zero means pdu.AttrSimple.
	Attr uint8
}

// Result is how a SCSI command ended.
type Result struct {
	Status uint8
	Sense  []byte
	// N is how many bytes of Read the target filled (or of Write it took):
	// the expected length less any residual.
	N         int
	Underflow bool
	Overflow  bool
}

// Execute sends cmd on one of the session's connections and waits for its
// status. A status other than GOOD returns the Result and a *SCSIError. If ctx
// ends first, the task is aborted at the target and the error says the
// command's outcome is unknown: a write is done only when Execute returns nil.
func (s *Session) Execute(ctx context.Context, cmd *Command) (*Result, error) {
	if len(cmd.CDB) == 0 || len(cmd.CDB) > 16 {
		return nil, fmt.Errorf("iscsi: CDB of %d bytes: want 1 to 16", len(cmd.CDB))
	}
	if len(cmd.Read) > 0 && len(cmd.Write) > 0 {
		return nil, errors.New("iscsi: bidirectional commands are not supported")
	}
	c, err := s.pickConn()
	if err != nil {
		return nil, err
	}
	return c.execute(ctx, cmd)
}

// Execute sends cmd on this connection; see Session.Execute.
func (c *Conn) Execute(ctx context.Context, cmd *Command) (*Result, error) {
	return c.execute(ctx, cmd)
}

func (c *Conn) execute(ctx context.Context, cmd *Command) (*Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotSent, err)
	}
	s := c.s
	p := c.params
	t := s.newTask(taskSCSI)
	t.lun = pdu.MakeLUN(cmd.LUN)
	t.readBuf = cmd.Read
	t.writeLen = len(cmd.Write)
	if t.writeLen > 0 {
		t.r2ts = make(chan pdu.R2T, p.MaxOutstandingR2T)
	}
	if err := c.register(t, false); err != nil {
		switch {
		case errors.Is(err, ErrNotSent):
		case errors.Is(err, ErrLoggedOut):
			err = errLoggingOut
		default:
			// The connection has ended: the command never left.
			err = fmt.Errorf("%w: the connection has ended: %w", ErrNotSent, err)
		}
		return nil, err
	}
	sent, finished := false, false
	defer func() {
		if !finished {
			c.abandon(t, sent)
		}
	}()

	attr := cmd.Attr
	if attr == 0 {
		attr = pdu.AttrSimple
	}
	req := &pdu.SCSICommand{Final: true, Read: len(cmd.Read) > 0, Write: t.writeLen > 0, Attr: attr,
		LUN: t.lun, ITT: t.itt, ExpectedDataTransferLength: uint32(max(len(cmd.Read), t.writeLen))}
	copy(req.CDB[:], cmd.CDB)
	// Immediate data, then unsolicited Data-Out, up to FirstBurstLength.
	var immediate []byte
	unsolicited := 0
	if t.writeLen > 0 {
		first := min(t.writeLen, p.FirstBurstLength)
		if p.ImmediateData {
			immediate = cmd.Write[:min(first, p.TargetMaxRecvDataSegmentLength)]
		}
		if !p.InitialR2T {
			unsolicited = first
		} else {
			unsolicited = len(immediate)
		}
		req.Final = unsolicited == len(immediate)
	}
	for {
		c.wmu.Lock()
		if c.logoutSent.Load() {
			// Nothing may follow a Logout Request on the connection.
			c.wmu.Unlock()
			return nil, errLoggingOut
		}
		sn, wait, ok := s.takeCmdSN()
		if ok {
			t.mu.Lock()
			t.cmdSN, t.sent = sn, true
			t.mu.Unlock()
			req.CmdSN = sn
			req.ExpStatSN = c.expStatSN.Load()
			err := c.w.Append(req, nil, immediate)
			if err == nil && unsolicited > len(immediate) {
				err = c.appendDataOut(t, cmd.Write, len(immediate), unsolicited-len(immediate), 0xffffffff)
			}
			if err != nil {
				// The CmdSN is taken but will never be sent: the target
				// would wait for it forever, so the connection is done.
				c.w.Discard()
				c.wmu.Unlock()
				c.fail(fmt.Errorf("iscsi: building a SCSI Command: %w", err))
				return nil, err
			}
			sent = true
			c.commands.Add(1)
			err = c.flushLocked(t.writeLen > 0)
			c.wmu.Unlock()
			if err != nil {
				c.fail(c.writeErr(err))
				return nil, fmt.Errorf("iscsi: command did not complete, its outcome on the target is unknown: %w", c.Err())
			}
			break
		}
		c.wmu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w, CmdSN window closed: %w", ErrNotSent, ctx.Err())
		case <-c.closing:
			return nil, fmt.Errorf("%w: %w", ErrNotSent, c.Err())
		}
	}

	if t.writeLen == 0 {
		// Read the response here if nobody else reads (reader.go).
		c.readOwn(ctx, t)
	} else {
		// R2Ts are answered by this goroutine: another one reads.
		c.ensureReader()
	}
	for {
		select {
		case <-t.done:
			finished = true
			c.settle(t)
			return t.result(cmd)
		case r := <-t.r2ts:
			c.wmu.Lock()
			if c.logoutSent.Load() {
				// The logout ends the task; no Data-Out after the request.
				c.wmu.Unlock()
				continue
			}
			err := c.appendDataOut(t, cmd.Write, int(r.BufferOffset), int(r.DesiredDataTransferLength), r.TTT)
			if err == nil {
				err = c.flushLocked(true)
			} else {
				c.w.Discard()
			}
			c.wmu.Unlock()
			if err != nil {
				c.fail(c.writeErr(err))
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("iscsi: command abandoned, its outcome on the target is unknown: %w", ctx.Err())
		}
	}
}

// appendDataOut queues Data-Out PDUs for data[off:off+n], each at most the
// target's MaxRecvDataSegmentLength. The caller holds wmu.
func (c *Conn) appendDataOut(t *task, data []byte, off, n int, ttt uint32) error {
	seg := c.params.TargetMaxRecvDataSegmentLength
	var dataSN uint32
	for end := off + n; off < end; dataSN++ {
		m := min(seg, end-off)
		d := &pdu.DataOut{Final: off+m == end, LUN: t.lun, ITT: t.itt, TTT: ttt,
			ExpStatSN: c.expStatSN.Load(), DataSN: dataSN, BufferOffset: uint32(off)}
		if err := c.w.Append(d, nil, data[off:off+m]); err != nil {
			return err
		}
		off += m
	}
	return nil
}

// settle makes sure the reader no longer touches a finished task's buffer:
// once it returns, no Data-In is copied into it. If the reader is copying a
// Data-In into the buffer right now, settle waits for that one PDU; a target
// that stalls in the middle of one for NOPTimeout loses the connection, which
// ends the copy.
func (c *Conn) settle(t *task) {
	c.remove(t.itt)
	if !t.mu.TryLock() {
		stalled := time.AfterFunc(c.s.cfg.nopTimeout(), func() {
			c.fail(fmt.Errorf("iscsi: target stalled in the middle of a Data-In for %v: %w", c.s.cfg.nopTimeout(), ErrDeadPeer))
		})
		t.mu.Lock()
		stalled.Stop()
	}
	t.dead = true
	t.mu.Unlock()
}

// abandon gives up a task whose caller stopped waiting: the reader stops
// filling its buffer, and if the command went out the target is asked to
// abort it (ABORT TASK on this connection, RFC 7143 §11.5.1).
func (c *Conn) abandon(t *task, sent bool) {
	c.settle(t)
	if !sent || !c.Active() {
		return
	}
	tmf := c.s.newTask(taskTMF)
	if c.register(tmf, false) != nil {
		return
	}
	req := &pdu.TaskMgmtRequest{Immediate: true, Function: pdu.TMFAbortTask, LUN: t.lun, ITT: tmf.itt,
		RefTaskTag: t.itt, CmdSN: c.s.currentCmdSN(), ExpStatSN: c.expStatSN.Load(), RefCmdSN: t.cmdSN}
	if err := c.send(req, nil); err != nil {
		c.remove(tmf.itt)
		c.log.Debug("abort task not sent", zap.Error(err))
	}
}

func (t *task) result(cmd *Command) (*Result, error) {
	if t.err != nil {
		if errors.Is(t.err, ErrClosed) || errors.Is(t.err, ErrConnReset) || errors.Is(t.err, ErrLoggedOut) || errors.Is(t.err, ErrDeadPeer) {
			return nil, fmt.Errorf("iscsi: command did not complete, its outcome on the target is unknown: %w", t.err)
		}
		return nil, t.err
	}
	n := max(len(cmd.Read), len(cmd.Write))
	switch {
	case t.under:
		n -= int(t.residual)
	}
	if n < 0 {
		n = 0
	}
	if len(cmd.Read) > 0 && t.received < n {
		n = t.received
	}
	res := &Result{Status: t.status, Sense: t.sense, N: n, Underflow: t.under, Overflow: t.over}
	if t.response != pdu.RespCommandCompleted || t.status != pdu.StatusGood {
		return res, &SCSIError{Response: t.response, Status: t.status, Sense: t.sense}
	}
	return res, nil
}

// dataIn copies a Data-In's payload straight into its task's buffer.
func (c *Conn) dataIn(d *pdu.DataIn, n int) error {
	t := c.lookup(d.ITT)
	if t == nil || t.kind != taskSCSI {
		c.log.Debug("Data-In for an unknown task", zap.Uint32("itt", d.ITT))
		return nil
	}
	t.mu.Lock()
	if t.dead {
		t.mu.Unlock()
		return nil
	}
	// Every Data-In of a command counts, with data or not (RFC 7143 §11.7.5).
	if d.DataSN != t.dataSN {
		t.mu.Unlock()
		return &pdu.ProtocolError{Op: pdu.OpSCSIDataIn, Field: "DataSN", Value: uint64(d.DataSN), Reason: fmt.Sprintf("expected %d", t.dataSN)}
	}
	t.dataSN++
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
		if err := c.r.ReadData(t.readBuf[off : off+n]); err != nil {
			t.mu.Unlock()
			return err
		}
		t.received += n
	}
	t.mu.Unlock()
	if d.HasStatus {
		t.complete(nil, func() {
			t.response, t.status = pdu.RespCommandCompleted, d.Status
			t.residual, t.under, t.over = d.ResidualCount, d.Underflow, d.Overflow
		})
	}
	return nil
}

// r2t hands an R2T to the task that must answer it with Data-Out.
func (c *Conn) r2t(r *pdu.R2T) error {
	t := c.lookup(r.ITT)
	if t == nil || t.kind != taskSCSI {
		c.log.Debug("R2T for an unknown task", zap.Uint32("itt", r.ITT))
		return nil
	}
	if c.logoutSent.Load() {
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
	select {
	case t.r2ts <- *r:
		return nil
	default:
		return &pdu.ProtocolError{Op: pdu.OpR2T, Field: "R2TSN", Value: uint64(r.R2TSN), Reason: "more R2Ts outstanding than MaxOutstandingR2T"}
	}
}

// TaskManagement sends a task management function (pdu.TMFAbortTask,
// pdu.TMFLogicalUnitReset, ...) and returns the target's response code.
// refTask is the tag of the task to abort, for pdu.TMFAbortTask only: the
// request then goes on the connection running that task with its CmdSN as
// RefCmdSN, as RFC 7143 §11.5 asks; for a tag no running command has, the
// target answers as for a task it does not know.
func (s *Session) TaskManagement(ctx context.Context, function uint8, lun int, refTask uint32) (uint8, error) {
	var c *Conn
	var refCmdSN uint32
	found := false
	if function == pdu.TMFAbortTask {
		for _, o := range s.Conns() {
			if t := o.lookup(refTask); t != nil && t.kind == taskSCSI {
				t.mu.Lock()
				refCmdSN, found = t.cmdSN, t.sent
				t.mu.Unlock()
				c = o
				break
			}
		}
	}
	if c == nil {
		var err error
		if c, err = s.pickConn(); err != nil {
			return 0, err
		}
	}
	t := s.newTask(taskTMF)
	if err := c.register(t, false); err != nil {
		return 0, err
	}
	sn := s.currentCmdSN()
	if !found {
		// RefCmdSN equal to the request's own CmdSN: the target must not
		// take an unknown task as one still to come.
		refCmdSN = sn
	}
	req := &pdu.TaskMgmtRequest{Immediate: true, Function: function, LUN: pdu.MakeLUN(lun), ITT: t.itt,
		RefTaskTag: refTask, CmdSN: sn, ExpStatSN: c.expStatSN.Load(), RefCmdSN: refCmdSN, ExpDataSN: 0}
	if function != pdu.TMFAbortTask {
		req.RefTaskTag, req.RefCmdSN = 0xffffffff, 0
	}
	if err := c.send(req, nil); err != nil {
		c.remove(t.itt)
		return 0, err
	}
	select {
	case <-t.done:
		if t.err != nil {
			return 0, t.err
		}
		return t.tmfResp, nil
	case <-ctx.Done():
		c.remove(t.itt)
		return 0, ctx.Err()
	}
}
