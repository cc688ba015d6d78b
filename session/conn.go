package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/goiscsi/iscsi/internal/sockio"
	"github.com/goiscsi/iscsi/pdu"
	"go.uber.org/zap"
)

// Connection states.
const (
	connActive     = iota
	connLoggingOut // no new commands; logout in progress
	connClosed
)

// Conn is one TCP connection of a session, in full feature phase. It has one
// reader goroutine that routes each PDU to the task waiting for it, and a
// keepalive goroutine; writes are serialized under one lock.
type Conn struct {
	s   *Session
	cid uint16
	nc  net.Conn
	log *zap.Logger
	r   *pdu.Reader
	// params are the session's parameters with this connection's own
	// digests and data segment lengths.
	params Params

	// wmu guards w, the PDUs queued for the next write, and flushing.
	// Writes are group commits: the goroutine that finds no write running
	// writes what is queued, with wmu released during the write; PDUs
	// queued meanwhile go out with its next write (see flushLocked).
	wmu      sync.Mutex
	w        *pdu.Writer
	wspare   *pdu.Writer // the batch being written, swapped with w
	flushing bool
	wdone    *sync.Cond // on wmu, broadcast when a flusher stops
	// wseq counts the batches written, for the keepalive's watch of a
	// write that does not end (writeWatch).
	wseq uint64

	mu    sync.Mutex
	tasks map[uint32]*task
	state int
	err   error // why the connection ended, once it has
	// loggingOut is set once Logout has begun on this connection.
	loggingOut bool
	// scsiCount counts SCSI tasks; idle, when set, is closed as it drops
	// to zero, for a logout draining the connection.
	scsiCount int
	idle      chan struct{}

	expStatSN atomic.Uint32
	lastRecv  atomic.Int64 // unix nanoseconds of the last PDU received
	// commands counts the SCSI commands sent on the connection.
	commands atomic.Uint64

	// nopReplies carries target pings (NOP-In with a TTT) to the keepalive
	// goroutine, which answers them; the reader never writes.
	nopReplies chan nopPing
	closing    chan struct{} // closed when the connection starts to close
	readerDone chan struct{}
	// exited is closed once the reader and the keepalive have both
	// returned; live counts them down.
	exited    chan struct{}
	live      atomic.Int32
	wg        sync.WaitGroup
	closeOnce sync.Once
	// logoutSent is set once a Logout Request went out on this connection.
	logoutSent atomic.Bool
	// asyncLogout is set once the target asked for a logout (event 1).
	asyncLogout atomic.Bool
	// logoutOK is set once the target answered our logout with success.
	logoutOK atomic.Bool
	// logoutDone is closed when the connection's logout has ended, with
	// its result in logoutRes; a second Logout waits for it.
	logoutDone chan struct{}
	logoutRes  LogoutResult

	// The reader role (reader.go): reading is set while a goroutine holds
	// it, rcmd is the command holding it (nil: the reader goroutine).
	// rcancel asks that command to stop; rboundary says it waits for a
	// header; rinterrupted that a deadline was set to interrupt it. All
	// under rmu. rwg counts commands holding the role, for Close.
	rmu          sync.Mutex
	reading      bool
	rcmd         *task
	rcancel      bool
	rboundary    bool
	rinterrupted bool
	rwake        chan struct{}
	ridle        *time.Timer // see armIdle
	ridleArmed   bool
	rlast        time.Time // when the role was last given up
	rwg          sync.WaitGroup
	// direct is set on a TCP connection: commands may read for themselves.
	direct bool
}

type nopPing struct {
	ttt  uint32
	lun  pdu.LUN
	data []byte
}

// CID returns the connection's ID within its session.
func (c *Conn) CID() uint16 { return c.cid }

// Session returns the connection's session.
func (c *Conn) Session() *Session { return c.s }

// Err returns why the connection ended, or nil while it is up.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Params returns the parameters in force on the connection: the session's,
// with this connection's digests and data segment lengths.
func (c *Conn) Params() Params { return c.params }

// Active reports whether the connection accepts new commands.
func (c *Conn) Active() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state == connActive
}

// Done is closed once the connection's reader has stopped.
func (c *Conn) Done() <-chan struct{} { return c.readerDone }

func newConn(s *Session, cid uint16, nc net.Conn, r *pdu.Reader, w *pdu.Writer, expStatSN uint32, params Params) *Conn {
	c := &Conn{
		s: s, cid: cid, nc: nc, r: r, w: w, params: params,
		logoutDone: make(chan struct{}),
		log:        s.log.With(zap.Uint16("cid", cid)),
		tasks:      make(map[uint32]*task),
		nopReplies: make(chan nopPing, 4),
		closing:    make(chan struct{}),
		readerDone: make(chan struct{}),
		exited:     make(chan struct{}),
		rwake:      make(chan struct{}, 1),
	}
	_, c.direct = nc.(*net.TCPConn)
	c.wdone = sync.NewCond(&c.wmu)
	c.expStatSN.Store(expStatSN)
	c.lastRecv.Store(time.Now().UnixNano())
	return c
}

func (c *Conn) start() {
	c.wg.Add(2)
	c.live.Store(2)
	go c.readLoop()
	go c.keepalive()
}

// register adds a task; it fails once the connection no longer takes commands
// (unless the task is allowed while logging out).
func (c *Conn) register(t *task, whileLoggingOut bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.state == connClosed:
		return c.closedErr()
	case c.state == connLoggingOut && !whileLoggingOut:
		return errLoggingOut
	}
	c.tasks[t.itt] = t
	if t.kind == taskSCSI {
		c.scsiCount++
	}
	return nil
}

func (c *Conn) closedErr() error {
	if c.err != nil {
		return c.err
	}
	return ErrClosed
}

func (c *Conn) lookup(itt uint32) *task {
	c.mu.Lock()
	t := c.tasks[itt]
	c.mu.Unlock()
	return t
}

func (c *Conn) remove(itt uint32) {
	c.mu.Lock()
	if t, ok := c.tasks[itt]; ok {
		delete(c.tasks, itt)
		if t.kind == taskSCSI {
			c.scsiCount--
			if c.scsiCount == 0 && c.idle != nil {
				close(c.idle)
				c.idle = nil
			}
		}
	}
	c.mu.Unlock()
}

// send writes one PDU under the write lock.
func (c *Conn) send(p pdu.PDU, data []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.sendLocked(p, data)
}

// watchWrite bounds a write of a request op whose caller waits with ctx:
// if ctx ends before the returned stop is called (the target stopped
// reading and the write does not end), the connection is failed, which
// ends the write.
func (c *Conn) watchWrite(ctx context.Context, op pdu.Opcode) (stop func()) {
	if ctx.Done() == nil {
		return func() {}
	}
	var done atomic.Bool
	unwatch := context.AfterFunc(ctx, func() {
		if !done.Load() {
			c.fail(fmt.Errorf("iscsi: %s not written before its context ended (the target does not read): %w: %w", op, ErrConnReset, ctx.Err()))
		}
	})
	return func() {
		done.Store(true)
		unwatch()
	}
}

func (c *Conn) sendLocked(p pdu.PDU, data []byte) error {
	if err := c.w.Append(p, nil, data); err != nil {
		return err
	}
	if err := c.flushLocked(len(data) > 0); err != nil {
		c.fail(c.writeErr(err))
		return c.Err()
	}
	c.ensureReader()
	return nil
}

// flushLocked writes the queued PDUs; the caller holds wmu, which is
// released during the write. When another goroutine is writing, it writes
// the caller's PDUs after its own and flushLocked returns at once, unless
// wait is set because the PDUs point into the caller's memory: then it
// returns once they are written (or dropped by a write that failed, which
// fails the connection). Commands ready together thus go out in one
// vectored write, and none parks on wmu for a write in progress.
func (c *Conn) flushLocked(wait bool) error {
	if c.flushing {
		if !wait {
			return nil
		}
		for c.flushing {
			c.wdone.Wait()
		}
		if c.w.Buffered() == 0 {
			return nil
		}
	}
	c.flushing = true
	var err error
	for c.w.Buffered() > 0 {
		if c.wspare == nil {
			c.wspare = pdu.NewWriter(sockio.WriterOf(c.nc))
			c.wspare.SetDigests(c.params.HeaderDigest, c.params.DataDigest)
		}
		batch := c.w
		c.w, c.wspare = c.wspare, batch
		c.wseq++
		c.wmu.Unlock()
		err = batch.Flush()
		c.wmu.Lock()
		if err != nil {
			c.w.Discard()
			break
		}
	}
	c.flushing = false
	c.wdone.Broadcast()
	return err
}

// goroutineDone ends one of the connection's goroutines.
func (c *Conn) goroutineDone() {
	if c.live.Add(-1) == 0 {
		close(c.exited)
	}
	c.wg.Done()
}

// writeErr names a failed write: the connection is gone, and the commands on
// it end as after a reset (their outcome unknown), not with the bare
// socket error.
func (c *Conn) writeErr(err error) error {
	select {
	case <-c.closing:
		return ErrClosed
	default:
	}
	return fmt.Errorf("iscsi: write on connection %d: %w: %w", c.cid, ErrConnReset, err)
}

// readErr names how the stream ended.
func (c *Conn) readErr(err error) error {
	select {
	case <-c.closing:
		return ErrClosed
	default:
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

func (c *Conn) dispatch(h *pdu.BHS) error {
	s := c.s
	if c.logoutOK.Load() {
		// The Logout Response ended the connection's commands (RFC 7143
		// §11.14): status or data for them after it is not to be believed.
		// Discard it; the connection closes after the grace period.
		c.log.Debug("discarding a PDU after the Logout Response", zap.Stringer("op", h.Opcode()))
		return nil
	}
	switch h.Opcode() {
	case pdu.OpSCSIDataIn:
		var d pdu.DataIn
		if err := d.UnmarshalBHS(h); err != nil {
			return err
		}
		s.updateWindow(d.ExpCmdSN, d.MaxCmdSN)
		if d.HasStatus {
			c.updateStatSN(d.StatSN)
		}
		return c.dataIn(&d, h.DataSegmentLength())
	case pdu.OpSCSIResponse:
		var r pdu.SCSIResponse
		if err := r.UnmarshalBHS(h); err != nil {
			return err
		}
		s.updateWindow(r.ExpCmdSN, r.MaxCmdSN)
		c.updateStatSN(r.StatSN)
		data, err := c.r.Data()
		if err != nil {
			return err
		}
		t, err := c.answering(pdu.OpSCSIResponse, r.ITT, taskSCSI)
		switch {
		case err != nil:
			return err
		case t != nil:
			t.scsiResponse(&r, data)
		default:
			c.log.Debug("SCSI Response for an unknown task", zap.Uint32("itt", r.ITT))
		}
	case pdu.OpR2T:
		var r pdu.R2T
		if err := r.UnmarshalBHS(h); err != nil {
			return err
		}
		s.updateWindow(r.ExpCmdSN, r.MaxCmdSN)
		return c.r2t(&r)
	case pdu.OpNOPIn:
		var n pdu.NOPIn
		if err := n.UnmarshalBHS(h); err != nil {
			return err
		}
		s.updateWindow(n.ExpCmdSN, n.MaxCmdSN)
		data, err := c.r.Data()
		if err != nil {
			return err
		}
		if n.ITT != pdu.ReservedTag {
			c.updateStatSN(n.StatSN)
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
			ping := nopPing{ttt: n.TTT, lun: n.LUN, data: append([]byte(nil), data...)}
			select {
			case c.nopReplies <- ping:
			default:
				c.log.Debug("dropping a NOP-In ping: answers already queued")
			}
		}
	case pdu.OpTaskMgmtResponse:
		var r pdu.TaskMgmtResponse
		if err := r.UnmarshalBHS(h); err != nil {
			return err
		}
		s.updateWindow(r.ExpCmdSN, r.MaxCmdSN)
		c.updateStatSN(r.StatSN)
		t, err := c.answering(pdu.OpTaskMgmtResponse, r.ITT, taskTMF)
		if err != nil {
			return err
		}
		if t != nil {
			c.remove(r.ITT)
			t.complete(nil, func() { t.tmfResp = r.Response })
		}
	case pdu.OpLogoutResponse:
		var r pdu.LogoutResponse
		if err := r.UnmarshalBHS(h); err != nil {
			return err
		}
		s.updateWindow(r.ExpCmdSN, r.MaxCmdSN)
		c.updateStatSN(r.StatSN)
		t, err := c.answering(pdu.OpLogoutResponse, r.ITT, taskLogout)
		if err != nil {
			return err
		}
		if t == nil {
			return &pdu.ProtocolError{Op: pdu.OpLogoutResponse, Field: "InitiatorTaskTag", Value: uint64(r.ITT), Reason: "no Logout Request with this tag"}
		}
		c.remove(r.ITT)
		if r.Response == pdu.LogoutSuccess {
			// The target closes the connection next: that end is the
			// logout's, not a reset, and the session is over before
			// anyone sees the connection go (Session.Ended).
			c.mu.Lock()
			if c.err == nil {
				c.err = ErrLoggedOut
			}
			c.mu.Unlock()
			c.logoutOK.Store(true)
			if t.logoutReason == pdu.LogoutCloseSession {
				s.markLoggedOut(LogoutResult{CID: c.cid, Reason: t.logoutReason, Responded: true,
					Time2Wait: r.Time2Wait, Time2Retain: r.Time2Retain})
			}
		}
		t.complete(nil, func() { t.logoutResp = r })
	case pdu.OpTextResponse:
		var r pdu.TextResponse
		if err := r.UnmarshalBHS(h); err != nil {
			return err
		}
		s.updateWindow(r.ExpCmdSN, r.MaxCmdSN)
		c.updateStatSN(r.StatSN)
		data, err := c.r.Data()
		if err != nil {
			return err
		}
		t, err := c.answering(pdu.OpTextResponse, r.ITT, taskText)
		if err != nil {
			return err
		}
		if t != nil {
			c.remove(r.ITT)
			resp, seg := r, append([]byte(nil), data...)
			t.complete(nil, func() { t.textResp, t.text = resp, seg })
		}
	case pdu.OpAsyncMessage:
		var a pdu.AsyncMessage
		if err := a.UnmarshalBHS(h); err != nil {
			return err
		}
		s.updateWindow(a.ExpCmdSN, a.MaxCmdSN)
		c.updateStatSN(a.StatSN)
		data, err := c.r.Data()
		if err != nil {
			return err
		}
		return c.async(&a, data)
	case pdu.OpReject:
		var rj pdu.Reject
		if err := rj.UnmarshalBHS(h); err != nil {
			return err
		}
		s.updateWindow(rj.ExpCmdSN, rj.MaxCmdSN)
		c.updateStatSN(rj.StatSN)
		data, err := c.r.Data()
		if err != nil {
			return err
		}
		if len(data) < pdu.BHSLen {
			return &pdu.ProtocolError{Op: pdu.OpReject, Field: "DataSegmentLength", Value: uint64(len(data)), Reason: "a Reject must carry the rejected header"}
		}
		var rh pdu.BHS
		copy(rh[:], data)
		c.log.Debug("target rejected a PDU", zap.String("op", rh.Opcode().String()), zap.String("reason", rj.Reason.String()))
		if t := c.rejected(&rh); t != nil {
			c.remove(t.itt)
			t.complete(&RejectError{Reason: rj.Reason, Op: rh.Opcode()}, nil)
		}
	default:
		return &pdu.ProtocolError{Op: h.Opcode(), Field: "Opcode", Value: uint64(h.Opcode()), Reason: "not allowed in full feature phase"}
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

// fail ends the connection with err: no new commands, every task fails.
func (c *Conn) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.state = connClosed
	tasks := c.tasks
	c.tasks = make(map[uint32]*task)
	c.scsiCount = 0
	if c.idle != nil {
		close(c.idle)
		c.idle = nil
	}
	err = c.err
	c.mu.Unlock()
	c.closeOnce.Do(func() {
		close(c.closing)
		c.nc.Close()
	})
	for _, t := range tasks {
		t.complete(err, nil)
	}
	c.s.connEnded(c)
}

// Close closes the connection at once, without a logout, and waits for its
// goroutines. Commands still running fail.
func (c *Conn) Close() error {
	c.fail(ErrClosed)
	c.wg.Wait()
	// No command takes the reader role once the connection is closing;
	// wait for those that hold it to see the end.
	c.rmu.Lock()
	if c.ridle != nil {
		c.ridle.Stop()
	}
	c.rmu.Unlock()
	c.rwg.Wait()
	return nil
}

// keepalive answers target pings and sends a NOP-Out when the connection has
// been idle for NOPInterval, failing it if no NOP-In comes in NOPTimeout. It
// also watches the writes: one that has not ended for NOPTimeout means the
// target stopped reading (a zero window; it may still send, pings
// included), and fails the connection, which ends the write. It never
// writes itself (post), so that such a write cannot hold it.
func (c *Conn) keepalive() {
	defer c.goroutineDone()
	interval := c.s.cfg.nopInterval()
	stall := c.s.cfg.nopTimeout()
	period := stall / 2
	if interval > 0 {
		period = min(period, interval/2)
	}
	ticker := time.NewTicker(period)
	defer ticker.Stop()
	var watch writeWatch
	var pending *task
	var pendingSince time.Time
	for {
		select {
		case <-c.closing:
			return
		case p := <-c.nopReplies:
			out := &pdu.NOPOut{Immediate: true, LUN: p.lun, ITT: pdu.ReservedTag, TTT: p.ttt,
				CmdSN: c.s.currentCmdSN(), ExpStatSN: c.expStatSN.Load()}
			if err := c.post(out, p.data); err != nil {
				return
			}
		case now := <-ticker.C:
			if watch.stalled(c, now, stall) {
				c.log.Debug("a write took no data for NOPTimeout: the target stopped reading")
				c.fail(ErrWriteStalled)
				return
			}
			if interval <= 0 {
				continue
			}
			if pending != nil {
				select {
				case <-pending.done:
					pending = nil
				default:
					// Any PDU since the NOP-Out shows the target alive;
					// the deadline runs from the last sign of life.
					since := max(pendingSince.UnixNano(), c.lastRecv.Load())
					if time.Duration(now.UnixNano()-since) > stall {
						c.log.Debug("NOP-Out unanswered: target is dead")
						c.fail(ErrDeadPeer)
						return
					}
					continue
				}
			}
			if time.Duration(now.UnixNano()-c.lastRecv.Load()) < interval {
				continue
			}
			t := c.s.newTask(taskNOP)
			if err := c.register(t, false); err != nil {
				continue
			}
			out := &pdu.NOPOut{Immediate: true, ITT: t.itt, TTT: pdu.ReservedTag, CmdSN: c.s.currentCmdSN(), ExpStatSN: c.expStatSN.Load()}
			t.setRequest(out.CmdSN)
			if err := c.post(out, nil); err != nil {
				return
			}
			pending, pendingSince = t, now
		}
	}
}

// writeWatch is the keepalive's view of the connection's writes: the same
// batch still being written at ticks stall apart means no write ended in
// that time.
type writeWatch struct {
	seq   uint64
	since time.Time
}

// stalled reports a write in progress, the same one, since stall before now.
func (w *writeWatch) stalled(c *Conn, now time.Time, stall time.Duration) bool {
	c.wmu.Lock()
	flushing, seq := c.flushing, c.wseq
	c.wmu.Unlock()
	if !flushing || seq != w.seq {
		w.seq, w.since = seq, now
		return false
	}
	return now.Sub(w.since) >= stall
}

// post queues a PDU of the keepalive's and returns without waiting for a
// write: a write in progress takes it with its next batch; with none, a
// goroutine of the connection writes it.
func (c *Conn) post(p pdu.PDU, data []byte) error {
	c.wmu.Lock()
	err := c.w.Append(p, nil, data)
	busy := c.flushing
	c.wmu.Unlock()
	if err != nil || busy {
		return err
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.wmu.Lock()
		err := c.flushLocked(false)
		c.wmu.Unlock()
		if err != nil {
			c.fail(c.writeErr(err))
			return
		}
		c.ensureReader()
	}()
	return nil
}
