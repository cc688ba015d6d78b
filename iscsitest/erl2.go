package iscsitest

// ErrorRecoveryLevel 2, connection recovery (RFC 7143 §6.2.2, §7.2,
// §11.5.1, §11.14.1): with Config.ErrorRecoveryLevel 2 negotiated, the
// tasks of a connection that ends without a logout (or is removed by a
// Logout with reason 2, or reinstated by a login with its CID) are kept for
// DefaultTime2Retain seconds: writes waiting for data, and the responses
// (Data-In and status) sent but not yet acknowledged by an ExpStatSN. A
// TASK REASSIGN on another connection moves such a task there: a read's
// Data-In is sent again from the request's ExpDataSN, then its status; a
// finished write's status is sent again; a write still taking data is asked
// for all of it again with new R2Ts (recovery R2Ts).

import (
	"slices"
	"time"

	"github.com/goiscsi/iscsi/pdu"
)

// maxKept bounds the responses kept per session awaiting acknowledgment;
// past it the oldest go (a well-behaved initiator acknowledges each
// status with its next PDU on the connection).
const maxKept = 4096

// erl2State is a session's connection recovery state, under s.mu.
type erl2State struct {
	// kept are the responses not yet acknowledged, by ITT.
	kept map[uint32]*keptResp
	// lost are the CIDs whose connection ended with tasks kept for
	// reassignment, until DefaultTime2Retain passes.
	lost map[uint16]bool
	// Reassigned counts the tasks moved.
	reassigned int
}

// keptResp is a response sent on c and not yet acknowledged: enough to send
// it again (a copy of the read's data).
type keptResp struct {
	c           *Conn
	statSN      uint32
	itt         uint32
	read, write bool
	edtl        uint32
	res         result
	expDataSN   uint32
	at          time.Time
}

// keepResponse copies what respond is about to send, for keep.
func (s *session) keepResponse(itt uint32, read, write bool, edtl uint32, res result, expDataSN uint32) *keptResp {
	k := &keptResp{itt: itt, read: read, write: write, edtl: edtl, expDataSN: expDataSN, at: time.Now()}
	k.res = result{status: res.status, sense: slices.Clone(res.sense), wantOut: res.wantOut}
	if n := res.dataLen(); n > 0 {
		k.res.data = slices.Clone(res.dataAt(0, n))
	}
	return k
}

// keep records k as sent on c, its status with the StatSN c has given last.
func (s *session) keep(c *Conn, k *keptResp) {
	c.outMu.Lock()
	k.c, k.statSN = c, c.statSN-1
	c.outMu.Unlock()
	if s.erl2.kept == nil {
		s.erl2.kept = make(map[uint32]*keptResp)
	}
	if len(s.erl2.kept) >= maxKept {
		var oldest *keptResp
		for _, o := range s.erl2.kept {
			if oldest == nil || o.at.Before(oldest.at) {
				oldest = o
			}
		}
		delete(s.erl2.kept, oldest.itt)
	}
	s.erl2.kept[k.itt] = k
}

// acked drops the responses sent on c that the ExpStatSN of a PDU from the
// initiator acknowledges.
func (s *session) acked(c *Conn, in *inPDU) {
	switch in.h.Opcode() {
	case pdu.OpSCSICommand, pdu.OpSCSIDataOut, pdu.OpNOPOut, pdu.OpTaskMgmtRequest, pdu.OpTextRequest, pdu.OpLogoutRequest:
	default:
		return
	}
	exp := be32(in.h[28:])
	for itt, k := range s.erl2.kept {
		if k.c == c && pdu.SerialLess(k.statSN, exp) {
			delete(s.erl2.kept, itt)
		}
	}
}

// dropConnTasks takes c's tasks out of the session as c leaves it: at ERL 2
// they are kept DefaultTime2Retain seconds for a TASK REASSIGN; below, they
// end.
func (s *session) dropConnTasks(c *Conn) {
	if s.params.ErrorRecoveryLevel < 2 || s.params.DefaultTime2Retain == 0 || c.loggedOut.Load() {
		s.abortTasks(func(tk *task) bool { return tk.c == c })
		for itt, k := range s.erl2.kept {
			if k.c == c {
				delete(s.erl2.kept, itt)
			}
		}
		return
	}
	if s.erl2.lost == nil {
		s.erl2.lost = make(map[uint16]bool)
	}
	s.erl2.lost[c.cid] = true
	retain := time.Duration(s.params.DefaultTime2Retain) * time.Second
	time.AfterFunc(retain, func() {
		if !s.t.track() {
			return
		}
		defer s.t.wg.Done()
		s.mu.Lock()
		// Whatever of c was not reassigned meanwhile ends now (§6.2.2).
		s.abortTasks(func(tk *task) bool { return tk.c == c })
		for itt, k := range s.erl2.kept {
			if k.c == c {
				delete(s.erl2.kept, itt)
			}
		}
		if s.conns[c.cid] == nil {
			delete(s.erl2.lost, c.cid)
		}
		s.mu.Unlock()
		s.runLater()
	})
}

// logoutForRecovery answers a Logout Request with reason 2: the connection
// req.CID leaves the session (closed if still open) and its tasks wait for
// reassignment. The response's Time2Wait is 0 (the tasks may move at once)
// and Time2Retain how long they wait.
func (s *session) logoutForRecovery(c *Conn, req *pdu.LogoutRequest, resp *pdu.LogoutResponse) {
	o := s.conns[req.CID]
	switch {
	case o != nil && o == c:
		// Reason 2 is for another connection than the one it comes on
		// (§11.14.1: "on another connection").
		resp.Response = pdu.LogoutCleanupFailed
	case o != nil:
		delete(s.conns, req.CID)
		s.dropConnTasks(o)
		s.t.count(func(st *Stats) { st.Logouts[req.ReasonCode]++ })
		o.finish()
		resp.Time2Retain = uint16(s.params.DefaultTime2Retain)
	case s.erl2.lost[req.CID]:
		s.t.count(func(st *Stats) { st.Logouts[req.ReasonCode]++ })
		resp.Time2Retain = uint16(s.params.DefaultTime2Retain)
	default:
		resp.Response = pdu.LogoutCIDNotFound
	}
	c.enqueue(resp, nil, nil, false)
}

// live reports whether o is a connection of the session in full feature
// phase.
func (s *session) live(o *Conn) bool { return o != nil && s.conns[o.cid] == o }

// taskReassign carries out TASK REASSIGN (§11.5.1) on c, the task's new
// connection, and sends resp (filled here) before what the task sends
// again.
func (s *session) taskReassign(c *Conn, v *pdu.TaskMgmtRequest, resp *pdu.TaskMgmtResponse) {
	itt := v.RefTaskTag
	if tk := s.tasks[itt]; tk != nil && !s.live(tk.c) {
		// A write still taking data: all of it is asked for again on c.
		s.erl2.reassigned++
		c.enqueue(resp, nil, nil, false)
		tk.c, tk.unsol, tk.next = c, false, 0
		clear(tk.r2ts)
		s.advance(tk)
		return
	}
	if k := s.erl2.kept[itt]; k != nil && !s.live(k.c) {
		s.erl2.reassigned++
		c.enqueue(resp, nil, nil, false)
		delete(s.erl2.kept, itt)
		from := uint32(0)
		if k.read {
			from = v.ExpDataSN
		}
		s.replayFrom = from
		s.respond(c, k.itt, k.read, k.write, k.edtl, k.res, k.expDataSN)
		s.replayFrom = 0
		return
	}
	for _, q := range s.pending {
		if q.in.h.Opcode() == pdu.OpSCSICommand && be32(q.in.h[16:]) == itt && !s.live(q.c) {
			// Received ahead of its CmdSN: it runs on c in its turn.
			s.erl2.reassigned++
			q.c = c
			c.enqueue(resp, nil, nil, false)
			return
		}
	}
	resp.Response = pdu.TMFNoSuchTask
	c.enqueue(resp, nil, nil, false)
}
