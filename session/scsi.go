package session

import (
	"context"
	"errors"
	"fmt"
	"sync"
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
//
// With Config.Recovery, a command that failed because the session lost its
// last connection, and one submitted while the session recovers, waits for
// the reinstatement (within ctx and the replacement timeout) and is sent
// again on the new session (see RecoveryConfig: writes too, unless
// NoRetryWrites; never a command that ended with a SCSI status or a
// Reject); once the recovery gives up it fails with ErrSessionFailed.
func (s *Session) Execute(ctx context.Context, cmd *Command) (*Result, error) {
	// Small enough to be inlined: a caller that keeps the Result to
	// itself (Read, Write, iscsictl perf) then has it on its stack.
	return s.executeTo(ctx, cmd, new(Result))
}

// executeTo is Execute with res for its Result: it returns res, or nil
// when the command has no result (an error other than a *SCSIError).
func (s *Session) executeTo(ctx context.Context, cmd *Command, res *Result) (*Result, error) {
	err := s.executeInto(ctx, cmd, res)
	if _, scsi := err.(*SCSIError); err != nil && !scsi {
		return nil, err
	}
	return res, err
}

// executeInto is Execute filling res, which it does not keep.
func (s *Session) executeInto(ctx context.Context, cmd *Command, res *Result) error {
	if len(cmd.CDB) == 0 || len(cmd.CDB) > 16 {
		return fmt.Errorf("iscsi: CDB of %d bytes: want 1 to 16", len(cmd.CDB))
	}
	if len(cmd.Read) > 0 && len(cmd.Write) > 0 {
		return errors.New("iscsi: bidirectional commands are not supported")
	}
	if s.erl2.Load() {
		return s.executeERL2(ctx, cmd, res)
	}
	if s.cfg.Recovery != nil {
		return s.executeRecovering(ctx, cmd, res)
	}
	c, err := s.pickConn()
	if err != nil {
		return err
	}
	return c.execute(ctx, cmd, res)
}

// Execute sends cmd on this connection; see Session.Execute.
func (c *Conn) Execute(ctx context.Context, cmd *Command) (*Result, error) {
	return c.executeTo(ctx, cmd, new(Result))
}

// executeTo is Session.executeTo on c.
func (c *Conn) executeTo(ctx context.Context, cmd *Command, res *Result) (*Result, error) {
	err := c.execute(ctx, cmd, res)
	if _, scsi := err.(*SCSIError); err != nil && !scsi {
		return nil, err
	}
	return res, err
}

// taskPool holds the tasks of Execute's commands that ended with the
// target's status and that nothing holds any more (recycle): an Execute in
// steady state allocates neither a task nor its done channel.
var taskPool = sync.Pool{New: func() any { return newSCSITask() }}

// execute runs cmd on c, filling res (see resultInto); res is not kept.
func (c *Conn) execute(ctx context.Context, cmd *Command, res *Result) error {
	*res = Result{}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrNotSent, err)
	}
	t := taskPool.Get().(*task)
	itt := c.s.itt.Add(1)
	if itt == pdu.ReservedTag {
		itt = c.s.itt.Add(1)
	}
	t.itt, t.conn = itt, c
	t.lun = pdu.MakeLUN(cmd.LUN)
	t.readBuf = cmd.Read
	t.writeLen = len(cmd.Write)
	t.cmd = cmd
	if t.writeLen > 0 && (t.r2ts == nil || cap(t.r2ts) != c.params.MaxOutstandingR2T) {
		t.r2ts = make(chan r2tIn, c.params.MaxOutstandingR2T)
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
		// Never listed: nothing else saw it.
		t.reset()
		taskPool.Put(t)
		return err
	}
	sent, finished := false, false
	defer func() {
		if !finished {
			t.on(c).abandon(t, sent)
		}
	}()
	// One watch of the context for the whole command: it interrupts the
	// command's own read (reader.go) and a write it is stuck in. Commands
	// running with the same context share one (ctxWatch); another context
	// meanwhile gets its own, which costs allocations.
	var stop func() bool
	shared := false
	if ctx.Done() != nil {
		if shared = c.role.watch.add(c, ctx, t); !shared {
			stop = context.AfterFunc(ctx, func() { c.cancel(t) })
		}
		defer func() {
			switch {
			case shared:
				c.role.watch.remove(t)
			case stop != nil:
				stop()
			}
		}()
	}
	sent, err := c.sendCommand(ctx, t, cmd)
	if err != nil && !(sent && t.held.Load()) {
		return err
	}
	// A command whose write failed as its connection was lost at ERL 2
	// is held to move to another connection (connrecovery.go): wait.

	if t.writeLen == 0 {
		// Read the response here if nobody else reads (reader.go).
		c.readOwn(t)
	} else {
		// R2Ts are answered by this goroutine: another one reads.
		c.ensureReader()
	}
	for {
		select {
		case <-t.done:
			finished = true
			t.on(c).settle(t)
			err := t.resultInto(cmd, res)
			// t is reused only if the context's watch never canceled
			// it (and will not): cancel may leave a timer holding t.
			canceled := false
			switch {
			case shared:
				shared = false
				canceled = c.role.watch.remove(t)
			case stop != nil:
				canceled = !stop()
				stop = nil
			}
			// Nor a task ERL 2 held or moved: another connection's
			// tables had it.
			if !canceled && !t.held.Load() && t.home.Load() == nil {
				c.recycle(t)
			}
			return err
		case r := <-t.r2ts:
			if ctx.Err() == nil {
				// On the connection the R2T came on: one that ended
				// (the task moved since, connrecovery.go) sends nothing.
				r.c.answerR2T(t, cmd.Write, &r.r)
			}
		case <-ctx.Done():
			return fmt.Errorf("%w (command abandoned): %w", ErrOutcomeUnknown, ctx.Err())
		}
	}
}

// ctxWatch is one context.AfterFunc for the Execute commands running on a
// connection with the same context: a caller that runs command after
// command with one context (iscsictl perf, a deadline over a whole job)
// then registers it once, not per command (an AfterFunc is three
// allocations and a lock of the parent context). When the context ends,
// every command registered is canceled (Conn.cancel), as its own watch
// would. The watch is moved to another context only when no command uses
// it; a command whose context differs from the one in use gets its own.
// The connection's reader stops it when the connection ends.
type ctxWatch struct {
	mu   sync.Mutex
	ctx  context.Context
	stop func() bool
	// fired says ctx ended and the commands registered then were
	// canceled; closed that the connection is over.
	fired  bool
	closed bool
	tasks  []*task
}

// add registers t for cancellation when ctx ends. It reports false when
// the shared watch cannot take it (another context in use, the context
// ended already, the connection over): the command then watches ctx
// itself.
func (w *ctxWatch) add(c *Conn, ctx context.Context, t *task) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return false
	}
	if w.ctx != ctx {
		if len(w.tasks) > 0 {
			return false
		}
		if w.stop != nil {
			w.stop()
		}
		w.ctx, w.fired = ctx, false
		w.stop = context.AfterFunc(ctx, func() { w.fire(c, ctx) })
	}
	if w.fired {
		return false
	}
	w.tasks = append(w.tasks, t)
	return true
}

// fire cancels the commands registered when ctx ended, holding mu: once
// remove has returned, the watch touches none of them any more.
func (w *ctxWatch) fire(c *Conn, ctx context.Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ctx != ctx {
		return // moved to another context since
	}
	w.fired = true
	for _, t := range w.tasks {
		c.cancel(t)
	}
}

// remove takes t out of the watch and reports whether the watch canceled
// it (its context ended while t was registered).
func (w *ctxWatch) remove(t *task) (canceled bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, o := range w.tasks {
		if o == t {
			last := len(w.tasks) - 1
			w.tasks[i] = w.tasks[last]
			w.tasks[last] = nil
			w.tasks = w.tasks[:last]
			break
		}
	}
	return w.fired
}

// release stops the watch for good: the connection is over.
func (w *ctxWatch) release() {
	w.mu.Lock()
	stop := w.stop
	w.closed, w.ctx, w.stop = true, nil, nil
	w.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// unlistDone takes Execute task t, which the reader ends with the target's
// status, out of the task table, and reports whether it did: only while
// the connection is up and no logout counts t (its pinned), so that nothing
// but t's goroutine holds t afterwards (the reader found it in the table,
// and reads no more for it). It is left in the table otherwise, for settle.
func (c *Conn) unlistDone(t *task) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.pinned.Load() || c.state() != connUp || c.tasks[t.itt] != t {
		return false
	}
	delete(c.tasks, t.itt)
	c.scsiCount--
	if c.scsiCount == 0 && c.idle != nil {
		close(c.idle)
		c.idle = nil
	}
	t.unlisted = true
	return true
}

// recycle puts a settled Execute task back in taskPool when nothing else
// can hold it: the reader unlisted it (unlistDone) and its done token was
// taken. A task that ended otherwise (its connection's end, a logout, a
// Reject, its caller giving up) is left to the garbage collector.
func (c *Conn) recycle(t *task) {
	c.mu.Lock()
	ok := t.unlisted
	c.mu.Unlock()
	if !ok {
		return
	}
	t.reset()
	taskPool.Put(t)
}

// commandPDU fills req, t's SCSI Command for cmd, and returns the
// immediate data it carries and how much of the write goes unsolicited (the
// immediate data, then Data-Out up to FirstBurstLength).
func (c *Conn) commandPDU(req *pdu.SCSICommand, t *task, cmd *Command) (immediate []byte, unsolicited int) {
	p := &c.params
	attr := cmd.Attr
	if attr == 0 {
		attr = pdu.AttrSimple
	}
	*req = pdu.SCSICommand{Final: true, Read: len(cmd.Read) > 0, Write: t.writeLen > 0, Attr: attr,
		LUN: t.lun, ITT: t.itt, ExpectedDataTransferLength: uint32(max(len(cmd.Read), t.writeLen))}
	copy(req.CDB[:], cmd.CDB)
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
	return immediate, unsolicited
}

// queueCommand queues t's SCSI Command for cmd with CmdSN sn, built in the
// connection's own PDU, its immediate data and its unsolicited Data-Out; it
// returns how much of the write they carry. The caller holds wmu and, on an
// error, discards what was queued.
func (c *Conn) queueCommand(t *task, cmd *Command, sn uint32) (unsolicited int, err error) {
	req := &c.as.req
	immediate, unsolicited := c.commandPDU(req, t, cmd)
	req.CmdSN = sn
	req.ExpStatSN = c.expStatSN.Load()
	err = c.w.Append(req, nil, immediate)
	if err == nil && unsolicited > len(immediate) {
		err = c.appendDataOut(t, cmd.Write, len(immediate), unsolicited-len(immediate), pdu.ReservedTag)
	}
	return unsolicited, err
}

// sendCommand sends t's SCSI Command with its immediate and unsolicited
// data, waiting for room in the CmdSN window. sent reports that the command
// (or part of it) may have reached the target.
func (c *Conn) sendCommand(ctx context.Context, t *task, cmd *Command) (sent bool, err error) {
	s := c.s
	for {
		c.wmu.Lock()
		if st := c.state(); st >= connLogoutSent {
			// Nothing may follow a Logout Request on the connection.
			c.wmu.Unlock()
			if st == connClosed {
				return false, fmt.Errorf("%w: the connection has ended: %w", ErrNotSent, c.Err())
			}
			return false, errLoggingOut
		}
		sn, wait, ok := s.takeCmdSN()
		if ok {
			// The connection's own SCSI Command, reused under wmu: a
			// PDU of its own per command would be an allocation.
			if sendCommandHook != nil {
				sendCommandHook(c, t)
			}
			if !t.claimRequest(sn) {
				// The connection ended under us and left the command
				// to fail as never sent (holdForReassign): it goes
				// again, and its CmdSN is filled.
				c.wmu.Unlock()
				c.s.fillCmdSN(c, sn)
				return false, fmt.Errorf("%w: the connection ended as the command was sent: %w", ErrNotSent, c.Err())
			}
			unsolicited, err := c.queueCommand(t, cmd, sn)
			if err != nil {
				// The CmdSN is taken but will never be sent: the target
				// would wait for it forever, so the connection is done.
				c.w.Discard()
				c.wmu.Unlock()
				c.fail(fmt.Errorf("iscsi: building a SCSI Command: %w", err))
				return false, err
			}
			t.markSent(0, unsolicited)
			c.commands.Add(1)
			err = c.flushFor(t, t.writeLen > 0)
			c.wmu.Unlock()
			if err != nil {
				c.fail(c.writeErr(err))
				return true, fmt.Errorf("%w: %w", ErrOutcomeUnknown, c.Err())
			}
			return true, nil
		}
		c.wmu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return false, fmt.Errorf("%w, CmdSN window closed: %w", ErrNotSent, ctx.Err())
		case <-c.closing:
			return false, fmt.Errorf("%w: %w", ErrNotSent, c.Err())
		}
	}
}

// sendCommandHook, when set (by tests only), runs in sendCommand after the
// command's CmdSN is taken and before it is claimed for sending: where a
// connection failing under the command is hardest to handle.
var sendCommandHook func(c *Conn, t *task)

// answerR2T sends the Data-Out an R2T asks for.
func (c *Conn) answerR2T(t *task, data []byte, r *pdu.R2T) {
	c.wmu.Lock()
	if c.state() >= connLogoutSent {
		// The logout ends the task; no Data-Out after the request.
		c.wmu.Unlock()
		return
	}
	off, n := int(r.BufferOffset), int(r.DesiredDataTransferLength)
	err := c.appendDataOut(t, data, off, n, r.TTT)
	if err == nil {
		t.markSent(off, n)
		err = c.flushFor(t, true)
	} else {
		c.w.Discard()
	}
	c.wmu.Unlock()
	if err != nil {
		c.fail(c.writeErr(err))
	}
}

// flushFor is flushLocked for task t's goroutine: while it writes, or
// waits for a write holding its PDUs, the task's cancel can end the
// connection (cancel).
func (c *Conn) flushFor(t *task, wait bool) error {
	t.flushing.Store(true)
	err := c.flushLocked(wait)
	t.flushing.Store(false)
	return err
}

// writeCancelGrace is how long a write that holds a command whose caller
// gave up may go on before the connection is failed to end it: a PDU half
// written cannot be taken back, and the caller's memory is in it. It is
// readCancelGrace's second. (At 250 ms TestGroupCommitWrites failed under
// load; the cause was a writer waiting for the flusher to stop rather
// than for its own batch, fixed in flushLocked, but a loaded machine
// still takes more than 250 ms for a batch now and then.)
const writeCancelGrace = time.Second

// cancel runs when command t's context ends: it stops the command reading
// for itself, and if the command's goroutine is in a write (the target
// stopped reading, say), it fails the connection unless the write ends
// within writeCancelGrace.
func (c *Conn) cancel(t *task) {
	c.interruptReader(t)
	if !t.flushing.Load() {
		return
	}
	time.AfterFunc(writeCancelGrace, func() {
		if t.flushing.Load() {
			c.fail(fmt.Errorf("iscsi: command abandoned while its PDUs were being written (the target does not read): %w", ErrConnReset))
		}
	})
}

// appendDataOut queues Data-Out PDUs for data[off:off+n], each at most the
// target's MaxRecvDataSegmentLength. The caller holds wmu.
func (c *Conn) appendDataOut(t *task, data []byte, off, n int, ttt uint32) error {
	seg := c.params.TargetMaxRecvDataSegmentLength
	var dataSN uint32
	for end := off + n; off < end; dataSN++ {
		m := min(seg, end-off)
		d := &c.as.dout
		*d = pdu.DataOut{Final: off+m == end, LUN: t.lun, ITT: t.itt, TTT: ttt,
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
// that stalls in the middle of it for readCancelGrace loses the connection,
// which ends the copy.
func (c *Conn) settle(t *task) {
	c.remove(t.itt)
	if !t.mu.TryLock() {
		stalled := time.AfterFunc(readCancelGrace, func() {
			c.fail(fmt.Errorf("iscsi: target stalled in the middle of a Data-In for %v: %w", readCancelGrace, ErrDeadPeer))
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
	tmf.setRequest(req.CmdSN)
	// Queued, not waited for: the caller has given up already, and a
	// target that stopped reading must not hold it here.
	if err := c.post(req, nil); err != nil {
		c.remove(tmf.itt)
		c.log.Debug("abort task not sent", zap.Error(err))
	}
}

// commandRef returns the CmdSN of the SCSI command with tag itt on c and
// whether it went out; ok is false when no command of c has that tag. It
// reads the task while it is in the table (under mu): once out of it, an
// Execute task may be reused for another command.
func (c *Conn) commandRef(itt uint32) (cmdSN uint32, sent, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.tasks[itt]
	if t == nil || t.kind != taskSCSI {
		return 0, false, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.cmdSN, t.sent, true
}

// resultInto fills res with how command cmd ended and returns its error;
// res is left zero when the command has no result (its error says why).
func (t *task) resultInto(cmd *Command, res *Result) error {
	*res = Result{}
	if t.err != nil {
		var rj *RejectError
		if errors.As(t.err, &rj) && rj.Op == pdu.OpSCSICommand || errors.Is(t.err, ErrNotSent) {
			// The target refused the command itself: it did not run it.
			return t.err
		}
		if errors.Is(t.err, ErrOutcomeUnknown) {
			// It says so already (a *ReassignError, a short transfer).
			return t.err
		}
		// Whatever ended the connection (a reset, a logout, a protocol
		// error in another PDU), a command sent is in an unknown state.
		return fmt.Errorf("%w: %w", ErrOutcomeUnknown, t.err)
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
	*res = Result{Status: t.status, Sense: t.sense, N: n, Underflow: t.under, Overflow: t.over}
	if t.response != pdu.RespCommandCompleted || t.status != pdu.StatusGood {
		return &SCSIError{Response: t.response, Status: t.status, Sense: t.sense}
	}
	// GOOD is believed for a write only for the data that went out: what
	// the target did not take, less the residual it owned up to, makes the
	// write a failure whatever its status says. (A read says in N how much
	// came in; Session.Read fails a short one.)
	if want := len(cmd.Write) - int(t.residual); t.writeLen > 0 && t.wrote < len(cmd.Write) && (!t.under || t.wrote < want) {
		*res = Result{}
		return &ShortTransferError{Done: t.wrote, Want: max(0, want)}
	}
	return nil
}

// TaskManagement sends a task management function (pdu.TMFAbortTask,
// pdu.TMFLogicalUnitReset, ...) and returns the target's response code.
// refTask is the tag of the task to abort, for pdu.TMFAbortTask only: the
// request then goes on the connection running that task with its CmdSN as
// RefCmdSN, as RFC 7143 §11.5 asks; for a tag no running command has, the
// target answers as for a task it does not know.
func (s *Session) TaskManagement(ctx context.Context, function pdu.TMFunction, lun int, refTask uint32) (pdu.TMResponse, error) {
	var c *Conn
	var refCmdSN uint32
	found := false
	if function == pdu.TMFAbortTask {
		for _, o := range s.Conns() {
			if sn, sent, ok := o.commandRef(refTask); ok {
				refCmdSN, found = sn, sent
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
	req := &pdu.TaskMgmtRequest{Immediate: true, Function: function, LUN: pdu.MakeLUN(lun), RefTaskTag: refTask, RefCmdSN: refCmdSN}
	// An unknown task gets RefCmdSN equal to the request's own CmdSN: the
	// target must not take it as one still to come.
	return c.taskManagement(ctx, req, false, !found)
}
