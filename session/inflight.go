package session

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/goiscsi/iscsi/pdu"
	"go.uber.org/zap"
)

// InFlightPolicy says what a logout does with the SCSI commands still
// running on the connections it stops, before its Logout Request goes out.
type InFlightPolicy uint8

// In-flight policies.
const (
	// InFlightDrain lets them finish for up to LogoutOptions.DrainTimeout;
	// those still running then fail with their outcome unknown.
	InFlightDrain InFlightPolicy = iota
	// InFlightAbort asks the target to abort them (ABORT TASK SET on each
	// LUN that has one, RFC 7143 §11.5.1; where the target refuses it, as
	// LIO does, ABORT TASK for each command of the connection) within
	// AbortTimeout; those the target confirmed aborted fail with
	// ErrAborted, the rest as with InFlightFail.
	InFlightAbort
	// InFlightFail fails them at once, their outcome unknown; the Logout
	// Request goes out at once.
	InFlightFail
)

var inFlightNames = [...]string{InFlightDrain: "drain", InFlightAbort: "abort", InFlightFail: "fail"}

// String returns "drain", "abort" or "fail".
func (p InFlightPolicy) String() string {
	if int(p) < len(inFlightNames) {
		return inFlightNames[p]
	}
	return fmt.Sprintf("policy %d", uint8(p))
}

// ErrAborted fails a command that a logout aborted at the target (policy
// InFlightAbort): the target confirmed it ended the command without
// completing it. It matches ErrOutcomeUnknown too, as the command's result
// does: a write aborted part way may have changed part of the medium.
var ErrAborted = errors.New("iscsi: command aborted at the target by the logout (ABORT TASK SET)")

// errFailedByLogout fails the commands of policy InFlightFail.
var errFailedByLogout = fmt.Errorf("iscsi: command failed at once by the logout (in-flight policy fail): %w", ErrLoggedOut)

// inFlightLocked returns the SCSI commands running on c (registered, their
// status not in); the caller holds c.mu. A logout snapshots them as it
// begins (beginLogout, in the same hold of c.mu that moves the connection to
// logging out, so that no status can slip between), and those of the
// session's other connections for reason 0, to count exactly how each one
// ended (countInFlight).
func (c *Conn) inFlightLocked() []*task {
	var out []*task
	for _, t := range c.tasks {
		if t.kind != taskSCSI {
			continue
		}
		select {
		case <-t.done: // its status is in: not in flight
		default:
			t.pinned.Store(true) // counted: never reused (recycle)
			out = append(out, t)
		}
	}
	return out
}

// inFlight is inFlightLocked taking c.mu.
func (c *Conn) inFlight() []*task {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inFlightLocked()
}

// countInFlight counts how the commands a logout found running ended, once
// every one has (the logout's connection has been failed, or its commands
// otherwise ended): with a status from the target, aborted as the target
// confirmed, or failed with their outcome unknown. A command that had not
// gone out when the logout began (it waited for the CmdSN window) is not
// counted: it was never in flight.
func countInFlight(tasks []*task, res *LogoutResult) {
	for _, t := range tasks {
		if !t.wasSent() {
			continue
		}
		select {
		case <-t.done:
		default:
			// Still running on a connection this logout did not end (a
			// sibling's commands, reason 1): not this logout's to count.
			continue
		}
		switch {
		case t.err == nil:
			res.Completed++
		case errors.Is(t.err, ErrAborted):
			res.Aborted++
		default:
			res.Unknown++
		}
	}
	res.Failed = res.Unknown
}

// failInFlight ends tasks at once for policy InFlightFail.
func failInFlight(tasks []*task) {
	for _, t := range tasks {
		t.complete(errFailedByLogout, nil)
	}
}

// abortInFlight asks the target to abort tasks within timeout: ABORT TASK
// SET on each of their LUNs, and where the target refuses it (LIO answers
// "function not supported"), ABORT TASK for each task of that LUN. A task
// whose abort the target confirmed fails with ErrAborted: after "function
// complete" it sends no status for it (RFC 7143 §11.5.1).
func (c *Conn) abortInFlight(ctx context.Context, tasks []*task, timeout time.Duration) {
	byLUN := map[pdu.LUN][]*task{}
	for _, t := range tasks {
		byLUN[t.lun] = append(byLUN[t.lun], t)
	}
	if len(byLUN) == 0 {
		return
	}
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for lun, ts := range byLUN {
		req := &pdu.TaskMgmtRequest{Immediate: true, Function: pdu.TMFAbortTaskSet, LUN: lun, RefTaskTag: pdu.ReservedTag}
		resp, err := c.taskManagement(actx, req, true, false)
		if err == nil && resp == pdu.TMFComplete {
			for _, t := range ts {
				t.complete(ErrAborted, nil)
			}
			continue
		}
		c.log.Debug("ABORT TASK SET not done: aborting each task", zap.Uint64("lun", uint64(lun)), zap.Stringer("response", resp), zap.Error(err))
		if err != nil && actx.Err() != nil {
			return
		}
		c.abortEach(actx, ts)
	}
}

// abortEach sends ABORT TASK for each of tasks (a target that refused
// ABORT TASK SET) and fails with ErrAborted those the target confirmed.
// A task the target does not know has ended or never arrived: its status
// decides, or the logout fails it.
func (c *Conn) abortEach(ctx context.Context, tasks []*task) {
	for _, t := range tasks {
		select {
		case <-t.done:
			continue // its status came meanwhile
		default:
		}
		if c.lookup(t.itt) != t {
			// A task of another connection of the session (reason 0):
			// ABORT TASK goes on the task's own connection, which
			// takes no request now; the session's end fails it.
			continue
		}
		t.mu.Lock()
		refSN, sent := t.cmdSN, t.sent
		t.mu.Unlock()
		if !sent {
			continue
		}
		req := &pdu.TaskMgmtRequest{Immediate: true, Function: pdu.TMFAbortTask, LUN: t.lun, RefTaskTag: t.itt, RefCmdSN: refSN}
		resp, err := c.taskManagement(ctx, req, true, false)
		switch {
		case err == nil && resp == pdu.TMFComplete:
			t.complete(ErrAborted, nil)
		case err != nil && ctx.Err() != nil:
			return
		default:
			c.log.Debug("ABORT TASK not done", zap.Uint32("itt", t.itt), zap.Stringer("response", resp), zap.Error(err))
		}
	}
}

// taskManagement sends req (its ITT, CmdSN and ExpStatSN filled here, and
// RefCmdSN with ownRef) on c and waits for the response until ctx ends;
// whileLoggingOut lets it go on a connection whose logout has begun (and
// not yet sent its request).
func (c *Conn) taskManagement(ctx context.Context, req *pdu.TaskMgmtRequest, whileLoggingOut, ownRef bool) (pdu.TMResponse, error) {
	t := c.s.newTask(taskTMF)
	if err := c.register(t, whileLoggingOut); err != nil {
		return 0, err
	}
	req.ITT = t.itt
	req.CmdSN = c.s.currentCmdSN()
	req.ExpStatSN = c.expStatSN.Load()
	if ownRef {
		req.RefCmdSN = req.CmdSN
	}
	if req.Function != pdu.TMFAbortTask && req.Function != pdu.TMFTaskReassign {
		req.RefTaskTag, req.RefCmdSN = pdu.ReservedTag, 0
	}
	t.setRequest(req.CmdSN)
	if _, err := c.exchange(ctx, t, req); err != nil {
		return 0, err
	}
	return t.tmfResp, nil
}

// exchange sends req, the request of t (registered, its CmdSN set), its
// write bounded by ctx (watchWrite), and waits within ctx for t's answer:
// it returns t's error once answered. A failed send, or ctx ending first
// (late), takes t out of the task table.
func (c *Conn) exchange(ctx context.Context, t *task, req pdu.PDU) (late bool, err error) {
	stop := c.watchWrite(ctx, req.Opcode())
	err = c.send(req, nil)
	stop()
	if err != nil {
		c.remove(t.itt)
		return false, err
	}
	select {
	case <-t.done:
		return false, t.err
	case <-ctx.Done():
		c.remove(t.itt)
		return true, ctx.Err()
	}
}
