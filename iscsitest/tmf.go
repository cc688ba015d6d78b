package iscsitest

import "github.com/goiscsi/iscsi/pdu"

// taskMgmt carries out a Task Management Function Request (RFC 7143 §11.5)
// on the tasks this target can have in flight: writes waiting for data and
// commands waiting for their CmdSN.
func (s *session) taskMgmt(c *Conn, in *inPDU, v *pdu.TaskMgmtRequest) {
	if s.discovery {
		c.reject(pdu.RejectProtocolError, &in.h)
		return
	}
	resp := &pdu.TaskMgmtResponse{ITT: v.ITT, Response: pdu.TMFComplete}
	lun := v.LUN.Number()
	lunOK := s.t.lun(lun) != nil
	switch v.Function {
	case pdu.TMFAbortTask:
		resp.Response = s.abortTask(v)
	case pdu.TMFAbortTaskSet, pdu.TMFClearTaskSet:
		if !lunOK {
			resp.Response = pdu.TMFNoSuchLUN
			break
		}
		s.abortTasks(func(tk *task) bool { return tk.lun == lun })
		if v.Function == pdu.TMFClearTaskSet {
			s.others(func(o *session) { o.abortTasks(func(tk *task) bool { return tk.lun == lun }) })
		}
	case pdu.TMFClearACA:
	case pdu.TMFLogicalUnitReset:
		if !lunOK {
			resp.Response = pdu.TMFNoSuchLUN
			break
		}
		s.abortTasks(func(tk *task) bool { return tk.lun == lun })
		s.others(func(o *session) {
			o.abortTasks(func(tk *task) bool { return tk.lun == lun })
			o.ua[lun] = senseUAReset
		})
	case pdu.TMFTargetWarmReset, pdu.TMFTargetColdReset:
		s.abortTasks(func(*task) bool { return true })
		s.others(func(o *session) {
			o.abortTasks(func(*task) bool { return true })
			for i := range s.t.luns {
				o.ua[i] = senseUATargetReset
			}
		})
		if v.Function == pdu.TMFTargetColdReset {
			// A cold reset drops every connection of every session, this
			// one's after the response.
			c.enqueue(resp, nil, nil, false)
			for _, cc := range s.endLocked(false) {
				cc.finish()
			}
			s.later = append(s.later, func() {
				for _, o := range s.t.liveSessions() {
					o.end(false)
				}
			})
			return
		}
	case pdu.TMFTaskReassign:
		if s.params.ErrorRecoveryLevel >= 2 {
			s.taskReassign(c, v, resp) // erl2.go
			return
		}
		resp.Response = pdu.TMFReassignUnsupported
	default:
		resp.Response = pdu.TMFNotSupported
	}
	c.enqueue(resp, nil, nil, false)
}

// abortTask carries out ABORT TASK (RFC 7143 §11.5.1).
func (s *session) abortTask(v *pdu.TaskMgmtRequest) pdu.TMResponse {
	if tk := s.tasks[v.RefTaskTag]; tk != nil {
		s.endTask(tk)
		return pdu.TMFComplete
	}
	for sn, q := range s.pending {
		if q.in.h.Opcode() == pdu.OpSCSICommand && be32(q.in.h[16:]) == v.RefTaskTag {
			delete(s.pending, sn)
			s.skip[sn] = true
			return pdu.TMFComplete
		}
	}
	// A command not received yet whose CmdSN is in the window and before the
	// request's: it counts as received, and aborted.
	exp, maxSN := s.window()
	if pdu.SerialLessEq(exp, v.RefCmdSN) && pdu.SerialLessEq(v.RefCmdSN, maxSN) &&
		pdu.SerialLess(v.RefCmdSN, v.CmdSN) && s.pending[v.RefCmdSN] == nil {
		s.skip[v.RefCmdSN] = true
		s.drainPending()
		return pdu.TMFComplete
	}
	return pdu.TMFNoSuchTask
}

// abortTasks ends the tasks f selects without a response.
func (s *session) abortTasks(f func(tk *task) bool) {
	for _, tk := range s.tasks {
		if f(tk) {
			s.endTask(tk)
		}
	}
}

// others runs f on every other live session under that session's lock,
// once this session's lock is released.
func (s *session) others(f func(o *session)) {
	s.later = append(s.later, func() {
		for _, o := range s.t.liveSessions() {
			if o == s {
				continue
			}
			o.mu.Lock()
			f(o)
			o.mu.Unlock()
		}
	})
}

// endTask forgets a task; Data-Out still arriving for it is ignored.
func (s *session) endTask(tk *task) {
	delete(s.tasks, tk.itt)
	s.recent = append(s.recent, tk.itt)
	if len(s.recent) > 2*int(s.depth) {
		s.recent = s.recent[1:]
	}
}
