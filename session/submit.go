package session

import (
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/goiscsi/iscsi/internal/sockio"
	"github.com/goiscsi/iscsi/pdu"
	"go.uber.org/zap"
)

// Call is one SCSI command submitted with Submit, for programs that keep
// many commands in flight (a load generator, a block device's queue).
//
// Why a completion callback rather than net/rpc's Client.Go shape (a Done
// channel per call): a channel send per completion wakes the goroutine that
// receives it, one goroutine hand-off per I/O, which on a 2-core machine is
// the largest Go-specific cost of an I/O (the scheduler parking and waking a
// second P). Done runs on the goroutine that read the command's status (the
// connection's reader), where it can record the result and Submit the next
// command: those commands go out together in one write when the reader has
// dispatched what it read (see beginBatch), and no goroutine is woken per
// I/O. A caller who wants Client.Go's shape sends the call on its own
// channel from Done.
//
// A Call and its buffers belong to the connection from a successful Submit
// until Done runs; the caller may then reuse it (nothing is allocated per
// command when it does).
type Call struct {
	// Cmd is the command; see Command. Cmd.Read and Cmd.Write must not be
	// touched until Done runs.
	Cmd Command
	// Done runs exactly once after a successful Submit, when the command
	// has ended, with Result and Err set. It runs on the connection's
	// reader goroutine (or, when the command ended without a status from
	// the target, on a goroutine of the connection): it must not block —
	// no waiting for I/O, locks held long, or channel sends that may wait —
	// or the connection reads nothing meanwhile. It may call Submit.
	Done func(*Call)
	// Tag is the caller's, left as it is.
	Tag uint64

	// Result is how the command ended when Err is nil or a *SCSIError
	// (Result.Sense is then the target's sense data).
	Result Result
	// Err is nil for GOOD status; otherwise as Execute's error: a
	// *SCSIError, a *ShortTransferError, ErrNotSent (the command never
	// left), or ErrOutcomeUnknown (it may have run).
	Err error

	conn *Conn
	itt  uint32
	// sess is the session that sends the call again after a
	// reinstatement (Session.Submit with Config.Recovery), nil otherwise;
	// gen is the session's reinstatements when the call was last sent, ua
	// how often it went again for a UNIT ATTENTION reporting one.
	sess *Session
	gen  uint64
	ua   uint8
	// anyConn says the call came through Session.Submit: at ERL 2 it may
	// go on another connection when its own ended before it was sent
	// (resendCall), resent times at most.
	anyConn bool
	resent  uint8
}

// errCanceled ends a call its caller canceled.
var errCanceled = errors.New("iscsi: command canceled by its caller")

// asyncConn is a connection's state for Submit and for the reader's
// batching of the writes its completions cause.
type asyncConn struct {
	// calls counts the calls in the task table and readOut the bytes
	// they read, for the receive mark (coalesceMark); guarded by the
	// Conn's mu. A connection's end empties the table and leaves them:
	// nothing reads it then.
	calls, readOut int
	// free holds the tasks of finished calls for reuse; guarded by the
	// Conn's mu. A task is put back only by the reader that completed it
	// with the target's status, while the connection was up: nothing else
	// can hold it then (its tag left the task table under the same lock,
	// and a logout snapshot of the table is taken under it too).
	free []*task
	// The following are guarded by wmu.
	// batching is set while the reader dispatches PDUs whose completions
	// may submit commands: those are queued, not written, and the reader
	// writes them in one go before it waits for the network (endBatch).
	batching bool
	// backlog holds calls waiting for room in the CmdSN window, in order;
	// backlogWaiting says a goroutine waits for the window to open.
	backlog        []*task
	backlogWaiting bool
	// req and dout are the PDUs being built, reused (an interface call
	// would make a local one escape: an allocation per PDU).
	req  pdu.SCSICommand
	dout pdu.DataOut
	// cw is what the connection's pdu.Writers write through once they
	// are the connection's own (shim); nil until the first is made.
	cw   *connWriter
	shim [2]*pdu.Writer

	// inBatch says the reader role's holder has batching set; only the
	// holder touches it.
	inBatch bool
	// src is the connection's socket reader, for what it has buffered;
	// nil when the connection is not read through one.
	src *sockio.Reader
	// drops is src's count of marks its watchdog dropped, as the reader
	// last saw it; cool counts the waits left without a mark after one
	// (coalesceMark). Only the reader role's holder touches them.
	drops uint64
	cool  int
}

// Submit sends call.Cmd on one of the session's connections and returns
// without waiting for it: call.Done runs when it has ended. An error means
// the command was not sent, and Done will not run.
//
// With Config.Recovery, a call rides through a reinstatement as Execute's
// commands do (see RecoveryConfig): one that failed because the session
// lost its last connection, and one submitted while the session recovers,
// waits for the reinstatement and is sent again on the new session (a
// write too, unless NoRetryWrites; never one that ended with a SCSI status
// or a Reject); once the recovery gives up, Done runs with ErrSessionFailed.
// Submit then returns nil while the session recovers, and an error at once
// only when the call cannot wait (the session failed, closed or logged
// out, or ReplacementTimeout is negative). A call waiting for the
// reinstatement cannot be canceled (Conn.Cancel reports false); Close ends
// it (Done runs before Close returns). Its Done may run on a goroutine of
// the session.
//
// At ErrorRecoveryLevel 2, a call whose connection is lost while another
// is up moves there (connrecovery.go), or, not sent yet, goes again there.
func (s *Session) Submit(call *Call) error {
	if err := checkCommand(&call.Cmd); err != nil {
		return err
	}
	if call.Done == nil {
		return errors.New("iscsi: Submit: Call.Done is nil")
	}
	call.anyConn, call.resent = true, 0
	if s.cfg.Recovery != nil {
		call.ua = 0
		return s.submitRecovering(call)
	}
	call.sess = nil
	for i := 0; ; i++ {
		c, err := s.pickConn()
		if err != nil {
			return err
		}
		if submitPickedHook != nil {
			submitPickedHook(c)
		}
		// At ErrorRecoveryLevel 2 a call whose connection ended between
		// the pick and its registration never went out: it goes on
		// another connection, as Execute's commands do.
		if err = c.submitCall(call); !s.sendAgain(i, err) {
			return err
		}
	}
}

// submitPickedHook, when set (by tests only), runs in Session.Submit
// between the pick of a connection and the call's registration on it.
var submitPickedHook func(c *Conn)

func checkCommand(cmd *Command) error {
	if len(cmd.CDB) == 0 || len(cmd.CDB) > 16 {
		return fmt.Errorf("iscsi: CDB of %d bytes: want 1 to 16", len(cmd.CDB))
	}
	if len(cmd.Read) > 0 && len(cmd.Write) > 0 {
		return errors.New("iscsi: bidirectional commands are not supported")
	}
	return nil
}

// Submit sends call.Cmd on this connection; see Session.Submit. A call
// submitted on a connection is not sent again by a recovery: the loss of
// the connection ends it, except at ErrorRecoveryLevel 2, where a call that
// went out moves to another connection with the lost one's commands
// (connrecovery.go); one not sent fails with ErrNotSent.
func (c *Conn) Submit(call *Call) error {
	if err := checkCommand(&call.Cmd); err != nil {
		return err
	}
	if call.Done == nil {
		return errors.New("iscsi: Submit: Call.Done is nil")
	}
	call.sess, call.anyConn = nil, false
	return c.submitCall(call)
}

// submitCall registers and sends a checked call on c.
func (c *Conn) submitCall(call *Call) error {
	t, err := c.registerCall(call)
	if err != nil {
		if errors.Is(err, ErrLoggedOut) {
			return errLoggingOut
		}
		if errors.Is(err, ErrNotSent) {
			return err
		}
		return fmt.Errorf("%w: the connection has ended: %w", ErrNotSent, err)
	}
	if registerCallHook != nil {
		registerCallHook(c)
	}
	return c.sendCall(t)
}

// registerCallHook, when set (by tests only), runs in submitCall between
// the call's task registered and its send: a connection that ends there
// has taken the task, and the call must not be reported as not sent.
var registerCallHook func(c *Conn)

// registerCall takes a task for call, from the free list when it can, and
// registers it.
func (c *Conn) registerCall(call *Call) (*task, error) {
	cmd := &call.Cmd
	c.mu.Lock()
	defer c.mu.Unlock()
	switch st := c.state(); {
	case st.ended():
		return nil, c.closedErr()
	case st != connUp:
		return nil, errLoggingOut
	}
	var t *task
	if n := len(c.as.free); n > 0 {
		t = c.as.free[n-1]
		c.as.free[n-1] = nil
		c.as.free = c.as.free[:n-1]
	} else {
		// Its done channel is closed only when the task will not be
		// reused (finishCall): a task put back keeps it open.
		t = &task{kind: taskSCSI, done: make(chan struct{})}
	}
	itt := c.s.itt.Add(1)
	if itt == pdu.ReservedTag {
		itt = c.s.itt.Add(1)
	}
	t.itt, t.call, t.conn = itt, call, c
	t.lun = pdu.MakeLUN(cmd.LUN)
	t.readBuf = cmd.Read
	t.writeLen = len(cmd.Write)
	c.tasks[itt] = t
	c.scsiCount++
	c.as.calls++
	c.as.readOut += len(cmd.Read)
	call.conn, call.itt = c, itt
	return t, nil
}

// sendCall queues t's command, or puts it in the backlog when the CmdSN
// window is closed, and writes it unless a write in progress or the
// reader's batch will.
func (c *Conn) sendCall(t *task) error {
	c.wmu.Lock()
	if st := c.state(); st >= connLogoutSent {
		c.wmu.Unlock()
		if !c.unregister(t) {
			// The connection ended since registerCall: its end took
			// the task and completes it.
			return nil
		}
		if st == connClosed {
			return fmt.Errorf("%w: the connection has ended: %w", ErrNotSent, c.Err())
		}
		return errLoggingOut
	}
	if len(c.as.backlog) > 0 {
		c.as.backlog = append(c.as.backlog, t)
		c.wmu.Unlock()
		return nil
	}
	sn, wait, ok := c.s.takeCmdSN()
	if !ok {
		c.as.backlog = append(c.as.backlog, t)
		c.waitWindowLocked(wait)
		c.wmu.Unlock()
		return nil
	}
	if err := c.appendCommand(t, &t.call.Cmd, sn); err != nil {
		c.w.Discard()
		c.wmu.Unlock()
		if err == errUnsendable {
			// The connection's end completes it (Done runs).
			c.s.fillCmdSN(c, sn)
			return nil
		}
		if !c.unregister(t) {
			return nil // the connection's end completes it
		}
		c.fail(fmt.Errorf("iscsi: building a SCSI Command: %w", err))
		return fmt.Errorf("%w: %w", ErrNotSent, err)
	}
	if c.flushing || c.as.batching {
		c.wmu.Unlock()
		c.ensureReader()
		return nil
	}
	err := c.flushLocked(false)
	c.wmu.Unlock()
	if err != nil {
		// The task is registered: the connection's end completes it.
		c.fail(c.writeErr(err))
		return nil
	}
	c.ensureReader()
	return nil
}

// unregister drops a task that never went out and will not complete, and
// reports whether it did: false when the connection's end (fail) has taken
// it from the task table already, and completes it (its call's Done runs,
// or the call goes again). The caller then must not report the call as
// not taken: it would be sent twice, two tasks for one call.
func (c *Conn) unregister(t *task) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tasks[t.itt] != t {
		return false
	}
	c.callGoneLocked(t)
	c.removeLocked(t.itt)
	t.call.conn = nil
	return true
}

// waitWindowLocked starts the goroutine that sends the backlog once the
// CmdSN window opens, if none runs. The caller holds wmu.
func (c *Conn) waitWindowLocked(wait <-chan struct{}) {
	if c.as.backlogWaiting {
		return
	}
	c.as.backlogWaiting = true
	c.wg.Add(1)
	go c.sendBacklog(wait)
}

// sendBacklog sends the calls waiting for the CmdSN window as it opens,
// until none is left or the connection closes (which fails them).
func (c *Conn) sendBacklog(wait <-chan struct{}) {
	defer c.wg.Done()
	for {
		select {
		case <-wait:
		case <-c.closing:
			c.wmu.Lock()
			c.as.backlog, c.as.backlogWaiting = nil, false
			c.wmu.Unlock()
			return
		}
		c.wmu.Lock()
		var err error
		var unsent []uint32
		for len(c.as.backlog) > 0 && c.state() < connLogoutSent {
			sn, w, ok := c.s.takeCmdSN()
			if !ok {
				wait = w
				break
			}
			t := c.as.backlog[0]
			c.as.backlog[0] = nil
			c.as.backlog = c.as.backlog[1:]
			if err = c.appendCommand(t, &t.call.Cmd, sn); err == errUnsendable {
				// Left to fail by the connection's end, which is
				// under way: its CmdSN is filled after the loop.
				unsent = append(unsent, sn)
				err = nil
				continue
			}
			if err != nil {
				c.w.Discard()
				break
			}
		}
		done := len(c.as.backlog) == 0 || c.state() >= connLogoutSent || err != nil
		if done {
			c.as.backlogWaiting = false
		}
		if err == nil {
			err = c.flushLocked(false)
		}
		c.wmu.Unlock()
		for _, sn := range unsent {
			c.s.fillCmdSN(c, sn)
		}
		if err != nil {
			c.fail(c.writeErr(err))
			return
		}
		c.ensureReader()
		if done {
			return
		}
	}
}

// errUnsendable is appendCommand's error for a call the connection's end
// left to fail as never sent (claimRequest): nothing was queued.
var errUnsendable = errors.New("iscsi: command left unsent by its connection's end")

// appendCommand queues t's SCSI Command with CmdSN sn and its immediate and
// unsolicited data. The caller holds wmu.
func (c *Conn) appendCommand(t *task, cmd *Command, sn uint32) error {
	if !t.claimRequest(sn) {
		return errUnsendable
	}
	unsolicited, err := c.queueCommand(t, cmd, sn)
	if err != nil {
		return err
	}
	t.markSent(0, unsolicited)
	c.commands.Add(1)
	return nil
}

// Cancel gives up call, submitted on this connection: Done runs soon with
// an error (ErrNotSent if the command had not gone out, else
// ErrOutcomeUnknown, the target being asked to abort it with ABORT TASK).
// It reports false when the call has ended already (or is not this
// connection's): Done runs, or ran, with its result.
func (c *Conn) Cancel(call *Call) bool {
	c.mu.Lock()
	t := c.tasks[call.itt]
	c.mu.Unlock()
	if t == nil || t.call != call {
		return false
	}
	c.wmu.Lock()
	for i, b := range c.as.backlog {
		if b == t {
			c.as.backlog = append(c.as.backlog[:i], c.as.backlog[i+1:]...)
			break
		}
	}
	c.wmu.Unlock()
	sent := t.wasSent()
	err := fmt.Errorf("%w: %w", ErrNotSent, errCanceled)
	if sent {
		err = errCanceled
	}
	if !t.complete(err, nil) {
		return false
	}
	if sent && c.Active() {
		tmf := c.s.newTask(taskTMF)
		if c.register(tmf, false) == nil {
			req := &pdu.TaskMgmtRequest{Immediate: true, Function: pdu.TMFAbortTask, LUN: t.lun, ITT: tmf.itt,
				RefTaskTag: t.itt, CmdSN: c.s.currentCmdSN(), ExpStatSN: c.expStatSN.Load(), RefCmdSN: t.cmdSN}
			tmf.setRequest(req.CmdSN)
			if err := c.post(req, nil); err != nil {
				c.remove(tmf.itt)
				c.log.Debug("abort task not sent", zap.Error(err))
			}
		}
	}
	return true
}

// finishCall ends a call's task, completed (t.fin set) with its result in
// t. onReader says the reader role's holder completed it with the target's
// status: Done then runs here, and the task is reused. Otherwise (the
// connection's end, a Reject, a logout's abort, Cancel) Done runs on a
// goroutine of the connection once the reader no longer fills the call's
// buffer and no write reads from it.
func (c *Conn) finishCall(t *task, onReader bool) {
	c.mu.Lock()
	if c.tasks[t.itt] == t {
		c.callGoneLocked(t)
		delete(c.tasks, t.itt)
		c.scsiCount--
		if c.scsiCount == 0 && c.idle != nil {
			close(c.idle)
			c.idle = nil
		}
	}
	reuse := onReader && c.state() == connUp && !t.pinned.Load()
	c.mu.Unlock()
	call := t.call
	if !reuse {
		// A logout counting its commands may hold the task (inflight.go).
		close(t.done)
	}
	if !onReader {
		c.wg.Add(1)
		go c.deliverLate(t, call)
		return
	}
	call.Err = t.resultInto(&call.Cmd, &call.Result)
	if reuse {
		t.reset()
		c.mu.Lock()
		c.as.free = append(c.as.free, t)
		c.mu.Unlock()
	}
	c.beginBatch()
	if call.Err != nil && call.sess != nil && call.sess.retryUA(call) {
		return
	}
	call.Done(call)
}

// callGoneLocked counts call task t out of the task table. The caller
// holds mu.
func (c *Conn) callGoneLocked(t *task) {
	c.as.calls--
	c.as.readOut -= len(t.readBuf)
}

// deliverLate runs Done for a call that ended without its status.
func (c *Conn) deliverLate(t *task, call *Call) {
	defer c.wg.Done()
	t.mu.Lock()
	t.dead = true // no Data-In goes into the buffer from now on
	t.mu.Unlock()
	if t.writeLen > 0 {
		// Data-Out of the call still queued or being written reads from
		// its buffer: write it (or see it fail) before the caller may
		// reuse the buffer.
		c.wmu.Lock()
		if c.flushing || c.w.Buffered() > 0 {
			if err := c.flushLocked(true); err != nil {
				c.wmu.Unlock()
				c.fail(c.writeErr(err))
				c.wmu.Lock()
			}
		}
		c.wmu.Unlock()
	}
	call.Err = t.resultInto(&call.Cmd, &call.Result)
	if call.Err != nil && !t.wasSent() && !errors.Is(call.Err, ErrNotSent) {
		call.Err = fmt.Errorf("%w: %w", ErrNotSent, t.err)
	}
	if call.Err != nil && c.s.resendCall(c, call) {
		return
	}
	if call.sess != nil && call.Err != nil && call.sess.lostCall(c, call) {
		return
	}
	call.Done(call)
}

// beginBatch sets batching for the reader role's holder: commands its
// completions submit are queued and go out together at endBatch.
func (c *Conn) beginBatch() {
	if c.as.inBatch {
		return
	}
	c.as.inBatch = true
	c.wmu.Lock()
	c.as.batching = true
	c.wmu.Unlock()
}

// endBatch ends the reader's batch before it may wait: what is queued goes
// out with a write that does not wait (the reader never waits on a write: a
// target that stopped reading would stop it reading too); what the socket
// does not take is copied and written by a goroutine of the connection.
// batchOpen reports a batch begun by the reader role and not yet ended
// (endBatch would write it); only the role's holder calls it.
func (c *Conn) batchOpen() bool { return c.as.inBatch }

func (c *Conn) endBatch() {
	if !c.as.inBatch {
		return
	}
	c.as.inBatch = false
	c.wmu.Lock()
	c.as.batching = false
	if c.flushing || c.w.Buffered() == 0 {
		c.wmu.Unlock()
		return
	}
	c.flushing = true
	if !c.isShim(c.w) {
		c.wg.Add(1)
		go c.flushOnGoroutine()
		c.wmu.Unlock()
		return
	}
	var err error
	cw := c.as.cw
	for c.w.Buffered() > 0 && len(cw.rest) == 0 {
		batch := c.w
		c.w, c.wspare = c.wspare, batch
		c.wseq++
		seq := c.wseq
		c.wmu.Unlock()
		cw.try = true
		err = batch.Flush()
		cw.try = false
		c.wmu.Lock()
		if err != nil {
			break
		}
		c.batchWritten(seq)
	}
	if err == nil && (len(cw.rest) > 0 || c.w.Buffered() > 0) {
		c.wg.Add(1)
		go c.flushOnGoroutine()
		c.wmu.Unlock()
		return
	}
	if err != nil {
		c.w.Discard()
	}
	c.flushing = false
	c.wdone.Broadcast()
	c.wmu.Unlock()
	if err != nil {
		c.fail(c.writeErr(err))
	}
}

// flushOnGoroutine goes on with a flush the reader began (flushing is set)
// on a goroutine that may wait for the socket.
func (c *Conn) flushOnGoroutine() {
	defer c.wg.Done()
	c.wmu.Lock()
	err := c.flushLoop()
	c.wmu.Unlock()
	if err != nil {
		c.fail(c.writeErr(err))
	}
}

// isShim reports whether w writes through the connection's connWriter.
func (c *Conn) isShim(w *pdu.Writer) bool {
	return w != nil && (w == c.as.shim[0] || w == c.as.shim[1])
}

// newShimWriter returns a pdu.Writer of the connection through its
// connWriter. The caller holds wmu.
func (c *Conn) newShimWriter() *pdu.Writer {
	if c.as.cw == nil {
		out := sockio.WriterOf(c.nc)
		cw := &connWriter{out: out}
		cw.raw, _ = out.(*sockio.Writer)
		cw.bw, _ = out.(pdu.BuffersWriter)
		c.as.cw = cw
	}
	w := pdu.NewWriter(c.as.cw)
	w.SetDigests(c.params.HeaderDigest, c.params.DataDigest)
	if c.as.shim[0] == nil {
		c.as.shim[0] = w
	} else {
		c.as.shim[1] = w
	}
	return w
}

// connWriter is the pdu.BuffersWriter a connection's batches are written
// through. With try set (the reader writing) it writes what the socket
// takes without waiting and keeps a copy of the rest, which the next write
// sends first; the caller's memory is then no longer referenced.
type connWriter struct {
	out  io.Writer
	raw  *sockio.Writer    // out, when it writes with raw system calls
	bw   pdu.BuffersWriter // out, when it is one
	try  bool
	rest []byte
	bufs net.Buffers // a copy of a batch for WriteTo, which consumes it
}

// Write writes p.
func (w *connWriter) Write(p []byte) (int, error) {
	if err := w.writeRest(); err != nil {
		return 0, err
	}
	return w.out.Write(p)
}

// WriteBuffers writes bufs (see connWriter).
func (w *connWriter) WriteBuffers(bufs [][]byte) error {
	if w.try {
		n := 0
		if w.raw != nil {
			var err error
			if n, err = w.raw.TryWriteBuffers(bufs); err != nil {
				return err
			}
		}
		for _, b := range bufs {
			if n >= len(b) {
				n -= len(b)
				continue
			}
			w.rest = append(w.rest, b[n:]...)
			n = 0
		}
		return nil
	}
	if err := w.writeRest(); err != nil {
		return err
	}
	if w.bw != nil {
		return w.bw.WriteBuffers(bufs)
	}
	w.bufs = append(w.bufs[:0], bufs...)
	_, err := w.bufs.WriteTo(w.out)
	clear(w.bufs[:cap(w.bufs)])
	w.bufs = w.bufs[:0]
	return err
}

// restKeep is the most of the rest buffer's memory kept between uses.
const restKeep = 256 << 10

// writeRest writes what a write that could not wait left.
func (w *connWriter) writeRest() error {
	if len(w.rest) == 0 {
		return nil
	}
	_, err := w.out.Write(w.rest)
	if cap(w.rest) > restKeep {
		w.rest = nil
	} else {
		w.rest = w.rest[:0]
	}
	return err
}
