package session

// ERL 2 connection recovery (RFC 7143 §6.2.2 allegiance reassignment, §7.2,
// §11.5.1 TASK REASSIGN, §11.14 Logout reason 2). When one connection of a
// session negotiated at ErrorRecoveryLevel 2 is lost (a reset, a dead peer;
// not Close, not a logout) while another is up, the session stays up:
//
//  1. the lost connection's commands that went out are held, not failed
//     (holdForReassign, from Conn.fail);
//  2. on a surviving connection, a Logout Request with reason 2 ("remove the
//     connection for recovery") for the lost CID tells the target the
//     connection is gone; after the response's Time2Wait
//  3. a replacement connection is logged in (a new CID), or, failing that,
//     a surviving one is used;
//  4. each held command is moved there with TASK MANAGEMENT function TASK
//     REASSIGN (8): registered on the new connection first, so that the
//     Data-In, R2Ts and status the target sends again after its response
//     find it. A read asks for the Data-In from ExpDataSN = the DataSN after
//     the last one it got (it got them all in order before it, §11.5.1); a
//     write answers the R2Ts the target sends again on the new connection
//     (an R2T of the lost connection is answered nowhere: r2tIn), so no
//     data goes twice on a connection and none is lost.
//
// A command the target does not take back (any response but "function
// complete", no response, or a step before failing) ends with a
// *ReassignError: its outcome is unknown. Every wait is bounded by the
// negotiated DefaultTime2Wait + DefaultTime2Retain (at least
// minConnRecovery): after it the target has dropped the tasks anyway. At
// ErrorRecoveryLevel < 2, or when the lost connection was the last one,
// nothing here runs: the commands fail as before (ErrOutcomeUnknown), and
// Config.Recovery's ERL 0 session recovery takes over.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/goiscsi/iscsi/pdu"
	"go.uber.org/zap"
)

// minConnRecovery is the least time a connection recovery may take, so that
// a Time2Wait + Time2Retain of a second leaves room for a login.
const minConnRecovery = 2 * time.Second

// notSentRetries bounds how often Execute sends again, at ERL 2, a command
// that never went out because its connection ended as it was sent.
const notSentRetries = 4

// ErrConnRecovery is matched by every *ReassignError.
var ErrConnRecovery = errors.New("iscsi: connection recovery (ERL 2)")

// ReassignError fails a command whose connection was lost at
// ErrorRecoveryLevel 2 and that could not be moved to another connection.
type ReassignError struct {
	// CID is the connection that was lost.
	CID uint16
	// Step is what failed: "logout" (reason 2 on a surviving
	// connection), "connection" (none left to move to) or "reassign".
	Step string
	// Responded is set when the target answered TASK REASSIGN, with
	// Response its answer (pdu.TMFReassignUnsupported,
	// pdu.TMFNotSupported, pdu.TMFNoSuchTask, ...).
	Responded bool
	Response  pdu.TMResponse
	// Err is why the step failed when the target gave no answer to it, or
	// the Logout Response error.
	Err error
	// OutcomeUnknown is set for a command that went out before the loss:
	// the target may have run it, in part or whole. It is always set for
	// commands held for reassignment (those not sent go again instead).
	OutcomeUnknown bool
}

func (e *ReassignError) Error() string {
	msg := fmt.Sprintf("iscsi: command of lost connection %d not moved (ERL 2 connection recovery, step %s)", e.CID, e.Step)
	if e.Responded {
		msg += fmt.Sprintf(": target answered TASK REASSIGN with %q", e.Response)
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	if e.OutcomeUnknown && !errors.Is(e.Err, ErrOutcomeUnknown) && !errors.Is(e.Err, ErrLoggedOut) {
		msg += "; its outcome on the target is unknown"
	}
	return msg
}

// Unwrap returns ErrConnRecovery, ErrOutcomeUnknown when the outcome is
// unknown, and Err.
func (e *ReassignError) Unwrap() []error {
	errs := []error{ErrConnRecovery}
	if e.OutcomeUnknown {
		errs = append(errs, ErrOutcomeUnknown)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

// ConnRecoveryInfo counts what ERL 2 connection recovery did in a session's
// life (Session.ConnRecovery).
type ConnRecoveryInfo struct {
	// Recoveries counts connections lost and recovered from; Replaced
	// those for which a new connection was logged in.
	Recoveries, Replaced int
	// Moved counts commands the target took back on another connection;
	// Failed those that ended with a *ReassignError.
	Moved, Failed int
	// Running is the number of recoveries under way.
	Running int
	// LastDuration is how long the last recovery took, from the loss to
	// the last command moved.
	LastDuration time.Duration
}

// connRecoveries is a session's ERL 2 bookkeeping, under s.mu.
type connRecoveries struct {
	held  map[*Conn][]*task
	info  ConnRecoveryInfo
	ctx   context.Context
	close context.CancelFunc
	// logoutHeld are the held commands the session-wide logouts found as
	// they began (takeHeld), pinned; heldClaimed is set when one of them
	// took these into its count (claimHeld): one logout counts them.
	logoutHeld  []*task
	heldClaimed bool
}

// ConnRecovery returns what ERL 2 connection recovery has done so far.
func (s *Session) ConnRecovery() ConnRecoveryInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.crec.info
}

// connRecoveryWanted reports whether the loss of c, with err, is one ERL 2
// recovers: negotiated ErrorRecoveryLevel 2 and a retain time, the session
// up, c ended without a logout or Close, and another connection up. Called
// with s.mu held; own is whether a logout ran on c.
func (s *Session) connRecoveryWanted(c *Conn, err error, own bool) bool {
	if s.params.ErrorRecoveryLevel < 2 || s.params.DefaultTime2Retain == 0 || s.state != sessionUp || own ||
		c.logoutAsked.Load() || c.state() == connLoggedOut || errors.Is(err, ErrClosed) || errors.Is(err, ErrLoggedOut) {
		return false
	}
	if _, ok := s.crec.held[c]; ok {
		return false
	}
	in, other := false, false
	for _, o := range s.conns {
		in = in || o == c
		other = other || o != c && o.Active()
	}
	return in && other
}

// holdForReassign takes, out of tasks (those of c, which failed with err),
// the SCSI commands that went out and may move to another connection, when
// connRecoveryWanted; connEnded then starts the recovery. It returns the
// tasks left to fail.
func (s *Session) holdForReassign(c *Conn, err error, tasks map[uint32]*task) map[uint32]*task {
	c.mu.Lock()
	own := c.ownLogout
	c.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.connRecoveryWanted(c, err, own) {
		return tasks
	}
	var held []*task
	for itt, t := range tasks {
		if t.kind != taskSCSI || t.fin.Load() {
			continue
		}
		t.mu.Lock()
		sent := t.sent
		// A command not sent yet will not be: it fails with ErrNotSent
		// and goes again (executeERL2, resendCall). Its sender, if it
		// has taken a CmdSN already, sees it unsendable (claimRequest)
		// and fills that CmdSN (fillCmdSN).
		t.unsendable = !sent
		t.mu.Unlock()
		if !sent {
			continue
		}
		t.held.Store(true)
		held = append(held, t)
		delete(tasks, itt)
	}
	if s.crec.held == nil {
		s.crec.held = make(map[*Conn][]*task)
	}
	s.crec.held[c] = held
	return tasks
}

// startConnRecoveryLocked starts the recovery of c if holdForReassign
// chose it; it reports whether it did. Called by connEnded with s.mu held.
func (s *Session) startConnRecoveryLocked(c *Conn, err error) bool {
	held, ok := s.crec.held[c]
	if !ok || s.state != sessionUp {
		return false
	}
	if s.crec.ctx == nil {
		s.crec.ctx, s.crec.close = context.WithCancel(context.Background())
	}
	s.crec.info.Running++
	t2w := time.Duration(s.params.DefaultTime2Wait) * time.Second
	t2r := time.Duration(s.params.DefaultTime2Retain) * time.Second
	s.log.Info("connection lost: ERL 2 connection recovery", zap.Uint16("cid", c.cid), zap.Int("commands", len(held)), zap.Error(err))
	s.wg.Add(1)
	go s.recoverConn(c, held, time.Now(), max(t2w+t2r, minConnRecovery))
	return true
}

// takeHeld records, as a logout of the whole session begins, the commands
// ERL 2 connection recovery holds (those of lost connections, not yet
// moved or failed), pinned for the count (inflight.go): that logout ends
// them too. The reason-1 logouts of every connection each take them as
// they begin; one may begin after another's end failed them already, so
// they are kept with the session, for whichever logout claims them.
func (s *Session) takeHeld() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, held := range s.crec.held {
		for _, t := range held {
			select {
			case <-t.done: // its status is in: not in flight
			default:
				t.pinned.Store(true)
				if !slices.Contains(s.crec.logoutHeld, t) {
					s.crec.logoutHeld = append(s.crec.logoutHeld, t)
				}
			}
		}
	}
}

// claimHeld returns the held commands the session-wide logouts took
// (takeHeld) to the one logout that counts them: the first to ask once the
// session is logged out — a reason-0 logout answered with success
// (sessionOver), or the last of the reason-1 logouts of every connection,
// whose end left the session logged out (connEnded). Its connection has
// ended when it asks. Nil for the others.
func (s *Session) claimHeld(sessionOver bool) []*task {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.crec.heldClaimed || len(s.crec.logoutHeld) == 0 || !sessionOver && s.state != sessionLoggedOut {
		return nil
	}
	s.crec.heldClaimed = true
	return s.crec.logoutHeld
}

// endConnRecovery stops the running connection recoveries of a session
// that logged out and waits, within ctx and at most heldWait, for the
// commands they held to end (each fails, its outcome unknown: the target
// dropped them with the session).
func (s *Session) endConnRecovery(ctx context.Context, held []*task) {
	if len(held) == 0 {
		return
	}
	s.mu.Lock()
	s.stopConnRecoveryLocked()
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, heldWait)
	defer cancel()
	for _, t := range held {
		if !waitDone(ctx, t.done) {
			return
		}
	}
}

// heldWait bounds how long a logout of the session waits for the commands
// connection recovery held to end once the recovery is stopped: each ends
// at the recovery's next step, without the network.
const heldWait = time.Second

// stopConnRecoveryLocked stops the running connection recoveries (Close).
func (s *Session) stopConnRecoveryLocked() {
	if s.crec.close != nil {
		s.crec.close()
	}
}

// recoverConn moves the commands held from the lost connection old to
// another connection; whatever it cannot move fails with a *ReassignError.
func (s *Session) recoverConn(old *Conn, held []*task, since time.Time, bound time.Duration) {
	defer s.wg.Done()
	s.mu.Lock()
	base := s.crec.ctx
	s.mu.Unlock()
	ctx, cancel := context.WithDeadline(base, since.Add(bound))
	defer cancel()
	moved, failed, replaced := 0, 0, false
	defer func() {
		s.mu.Lock()
		delete(s.crec.held, old)
		in := &s.crec.info
		in.Running--
		in.Recoveries++
		in.Moved += moved
		in.Failed += failed
		if replaced {
			in.Replaced++
		}
		in.LastDuration = time.Since(since)
		s.mu.Unlock()
	}()
	fail := func(ts []*task, e *ReassignError) {
		for _, t := range ts {
			ee := *e
			ee.OutcomeUnknown = true
			if t.complete(&ee, nil) {
				failed++
			}
		}
	}
	// Nothing of the lost connection touches a held command once its
	// reader, and the commands that read for themselves, have stopped.
	if !waitDone(ctx, old.readerDone) || !waitCmds(ctx, old) {
		fail(held, &ReassignError{CID: old.cid, Step: "connection", Err: fmt.Errorf("the lost connection's reader did not stop: %w", ctx.Err())})
		return
	}
	sur := s.activeConn(nil)
	if sur == nil {
		fail(held, &ReassignError{CID: old.cid, Step: "connection", Err: errors.New("no connection of the session is up")})
		return
	}
	resp, err := sur.logoutForRecovery(ctx, old.cid)
	switch {
	case err != nil:
		fail(held, &ReassignError{CID: old.cid, Step: "logout", Err: err})
		return
	case resp.Response == pdu.LogoutSuccess, resp.Response == pdu.LogoutCIDNotFound:
		// Time2Retain 0 with success says the target keeps nothing
		// (§11.15.2), but LIO (6.1) sends 0 in every reason-2 Logout
		// Response and keeps the tasks for DefaultTime2Retain: TASK
		// REASSIGN is tried anyway, and a target that did drop them
		// refuses each (the command then fails as it would here).
		if resp.Response == pdu.LogoutSuccess && resp.Time2Retain == 0 && len(held) > 0 {
			s.log.Info("ERL 2: Logout Response with Time2Retain 0, reassigning anyway", zap.Uint16("cid", old.cid))
		}
		// CID not found: the target saw the loss first and holds the
		// connection's tasks for recovery on its own.
	default:
		fail(held, &ReassignError{CID: old.cid, Step: "logout", Err: &LogoutResponseError{Response: resp.Response, Time2Wait: resp.Time2Wait, Time2Retain: resp.Time2Retain}})
		return
	}
	// The Logout Response's Time2Wait is the least wait before the
	// connection's tasks may move (§11.15.2).
	if !sleepCtx(ctx, time.Duration(resp.Time2Wait)*time.Second) {
		fail(held, &ReassignError{CID: old.cid, Step: "logout", Err: fmt.Errorf("waiting Time2Wait (%d s): %w", resp.Time2Wait, ctx.Err())})
		return
	}
	nc, err := s.AddConnection(ctx)
	if err == nil {
		replaced = true
	} else {
		s.log.Info("ERL 2: no replacement connection, moving commands to one still up", zap.Uint16("cid", old.cid), zap.Error(err))
		if nc = s.activeConn(nil); nc == nil {
			fail(held, &ReassignError{CID: old.cid, Step: "connection", Err: fmt.Errorf("no connection of the session is up; replacement: %w", err)})
			return
		}
	}
	for _, t := range held {
		switch e := nc.reassign(ctx, t); {
		case e == nil:
			moved++
		case e.Err != nil && errors.Is(e.Err, errReassignSkipped):
			// Its caller gave up (a write to the lost socket failed,
			// say).
			nc.plugIfLost(t)
		default:
			e.CID = old.cid
			fail([]*task{t}, e)
			// A refusal of a task the target never got ("function
			// rejected" from LIO 6.1 rather than "no such task").
			nc.plugIfLost(t)
		}
	}
	s.log.Info("ERL 2 connection recovery done", zap.Uint16("lost", old.cid), zap.Uint16("to", nc.cid),
		zap.Int("moved", moved), zap.Int("failed", failed), zap.Duration("took", time.Since(since)))
}

// plugIfLost fills t's CmdSN on c if the target never got t (it has not
// acknowledged that CmdSN): the target waits for it before any later
// command of the session, which would otherwise wait for ever.
func (c *Conn) plugIfLost(t *task) {
	t.mu.Lock()
	sn, sent := t.cmdSN, t.sent
	t.mu.Unlock()
	if sent && c.s.unacknowledged(sn) {
		if err := c.plugGap(sn); err != nil {
			c.log.Info("ERL 2: CmdSN gap not filled", zap.Uint32("cmdsn", sn), zap.Error(err))
		}
	}
}

// errReassignSkipped marks a command that ended (its caller gave up) before
// it could move.
var errReassignSkipped = errors.New("command ended before its reassignment")

// reassign moves t to c with TASK REASSIGN; nil when the target took it.
func (c *Conn) reassign(ctx context.Context, t *task) *ReassignError {
	t.mu.Lock()
	if t.dead || t.fin.Load() {
		t.mu.Unlock()
		return &ReassignError{Err: errReassignSkipped}
	}
	expDataSN := uint32(0)
	if t.writeLen == 0 {
		// The Data-In up to here came in order into the buffer: the
		// target sends again from the first one missing (§11.5.1).
		expDataSN = t.dataSN
	}
	refCmdSN := t.cmdSN
	// A write's R2Ts on c follow the target's R2TSN from wherever it
	// is (r2tInOrder): set before c's reader can see the task.
	t.r2tResync = t.writeLen > 0
	t.home.Store(c)
	if t.call != nil {
		// A Submit call is c's from now on: its completion leaves c's
		// table, Done runs on c (finishCall).
		t.conn, t.call.conn = c, c
	}
	t.mu.Unlock()
	if err := c.registerMoved(t); err != nil {
		return &ReassignError{Step: "reassign", Err: err}
	}
	t.mu.Lock()
	dead := t.dead
	t.mu.Unlock()
	if dead {
		// Settled as it moved, from the old connection's map.
		c.unlistMoved(t)
		return &ReassignError{Err: errReassignSkipped}
	}
	req := &pdu.TaskMgmtRequest{Immediate: true, Function: pdu.TMFTaskReassign, LUN: t.lun, RefTaskTag: t.itt,
		RefCmdSN: refCmdSN, ExpDataSN: expDataSN}
	resp, err := c.taskManagement(ctx, req, false, false)
	if err == nil && resp == pdu.TMFNoSuchTask && t.command() != nil && c.s.unacknowledged(refCmdSN) {
		// The command never reached the target (its CmdSN is not
		// acknowledged: a gap the target waits to fill). It goes again,
		// same ITT and CmdSN, on c: a retry (§6.2.1), not a new command.
		if err = c.retry(t, refCmdSN); err == nil {
			c.ensureReader()
			return nil
		}
	}
	switch {
	case err != nil:
		c.unlistMoved(t)
		return &ReassignError{Step: "reassign", Err: err}
	case resp != pdu.TMFComplete:
		c.unlistMoved(t)
		return &ReassignError{Step: "reassign", Responded: true, Response: resp}
	}
	// What the target sends again comes on c: its reader must run.
	c.ensureReader()
	return nil
}

// registerMoved registers t, moving from a lost connection, on c; a Submit
// call counts in c's calls as registerCall's do.
func (c *Conn) registerMoved(t *task) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st := c.state(); st.ended() {
		return c.closedErr()
	} else if st != connUp {
		return errLoggingOut
	}
	c.tasks[t.itt] = t
	c.scsiCount++
	if t.call != nil {
		c.as.calls++
		c.as.readOut += len(t.readBuf)
	}
	return nil
}

// unlistMoved takes t, which registerMoved put in c's table, out of it.
func (c *Conn) unlistMoved(t *task) {
	c.mu.Lock()
	if t.call != nil && c.tasks[t.itt] == t {
		c.callGoneLocked(t)
	}
	c.mu.Unlock()
	c.remove(t.itt)
}

// unacknowledged reports whether the target has not yet received the
// command of CmdSN sn: it is at or past ExpCmdSN.
func (s *Session) unacknowledged(sn uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return pdu.SerialLessEq(s.expCmdSN, sn)
}

// retry sends t's SCSI Command again on c with its ITT and CmdSN, and its
// immediate and unsolicited data: the target never got it.
func (c *Conn) retry(t *task, cmdSN uint32) error {
	cmd := t.command()
	t.mu.Lock()
	t.wrote, t.spans, t.received, t.dataSN = 0, t.spans[:0], 0, 0
	t.mu.Unlock()
	c.wmu.Lock()
	if c.state() >= connLogoutSent {
		c.wmu.Unlock()
		return fmt.Errorf("%w: the new connection is logging out or ended", ErrNotSent)
	}
	unsolicited, err := c.queueCommand(t, cmd, cmdSN)
	if err != nil {
		c.w.Discard()
		c.wmu.Unlock()
		return err
	}
	t.markSent(0, unsolicited)
	err = c.flushFor(t, true)
	c.wmu.Unlock()
	if err != nil {
		c.fail(c.writeErr(err))
		return err
	}
	return nil
}

// plugGap sends on c a NOP-Out, not immediate, with CmdSN sn: the number
// of a command the target never got and that is not sent again, so that
// the commands after it are not held at the target for ever (RFC 7143
// §4.2.2.1 delivers commands in CmdSN order). Its NOP-In is not waited for.
func (c *Conn) plugGap(sn uint32) error {
	t := c.s.newTask(taskNOP)
	if err := c.register(t, false); err != nil {
		return err
	}
	out := &pdu.NOPOut{ITT: t.itt, TTT: pdu.ReservedTag, CmdSN: sn, ExpStatSN: c.expStatSN.Load()}
	t.setRequest(sn)
	if err := c.post(out, nil); err != nil {
		c.remove(t.itt)
		return err
	}
	return nil
}

// fillCmdSN fills CmdSN sn, taken on c for a command that will not go out
// (its connection ended as it was sent), with a NOP-Out on another
// connection: the target delivers commands in CmdSN order (RFC 7143
// §4.2.2.1) and would hold every later one waiting for it. With no other
// connection up the session's end (or its ERL 0 recovery) clears the gap.
func (s *Session) fillCmdSN(c *Conn, sn uint32) {
	o := s.activeConn(c)
	if o == nil {
		return
	}
	if err := o.plugGap(sn); err != nil {
		s.log.Info("CmdSN of a command not sent left unfilled", zap.Uint32("cmdsn", sn), zap.Uint16("cid", o.cid), zap.Error(err))
	}
}

// activeConn returns a connection of the session that takes commands, not
// except.
func (s *Session) activeConn(except *Conn) *Conn {
	for _, o := range s.Conns() {
		if o != except && o.Active() {
			return o
		}
	}
	return nil
}

// waitDone waits for ch within ctx.
func waitDone(ctx context.Context, ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	case <-ctx.Done():
		return false
	}
}

// waitCmds waits, within ctx, for the commands that read for themselves on
// c (its socket is closed: their reads end at once).
func waitCmds(ctx context.Context, c *Conn) bool {
	done := make(chan struct{})
	go func() {
		c.role.cmds.Wait()
		close(done)
	}()
	return waitDone(ctx, done)
}

// resendCall sends again, at ErrorRecoveryLevel 2, a call of Session.Submit
// that never went out because its connection ended (those that went out
// move by TASK REASSIGN instead), on another connection up; as
// executeERL2, at most notSentRetries times. It reports whether it did
// (Done then runs later).
func (s *Session) resendCall(c *Conn, call *Call) bool {
	if !call.anyConn || errors.Is(call.Err, errCanceled) || !s.sendAgain(int(call.resent), call.Err) {
		return false
	}
	o := s.activeConn(c)
	if o == nil {
		return false
	}
	call.resent++
	err := call.Err
	call.Err, call.Result = nil, Result{}
	if o.submitCall(call) != nil {
		call.Err = err // Done runs with the first failure
		return false
	}
	return true
}

// executeERL2 is Session.Execute at ErrorRecoveryLevel 2, filling res: a
// command that never went out because its connection ended as it was sent
// goes again on another (those that went out move by TASK REASSIGN
// instead).
func (s *Session) executeERL2(ctx context.Context, cmd *Command, res *Result) error {
	for i := 0; ; i++ {
		var err error
		if s.cfg.Recovery != nil {
			err = s.executeRecovering(ctx, cmd, res)
		} else {
			c, perr := s.pickConn()
			if perr != nil {
				return perr
			}
			err = c.execute(ctx, cmd, res)
		}
		if ctx.Err() != nil || !s.sendAgain(i, err) {
			return err
		}
	}
}

// sendAgain reports whether a command (Execute's, or a call of Submit)
// that failed with err on its attempt i goes again on another connection:
// at ErrorRecoveryLevel 2, one that never went out (ErrNotSent) because
// its connection ended, at most notSentRetries times, while the session is
// up with another connection — not one a logout turned away.
func (s *Session) sendAgain(i int, err error) bool {
	return err != nil && i < notSentRetries && s.erl2.Load() && errors.Is(err, ErrNotSent) &&
		!errors.Is(err, errLoggingOut) && s.State() == sessionUp && s.activeConn(nil) != nil
}
