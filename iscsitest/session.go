package iscsitest

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/goiscsi/iscsi/pdu"
)

// handler handles one PDU of a session, under the session's lock.
type handler func(s *session, c *Conn, in *inPDU, p pdu.PDU)

// queued is a command received ahead of its CmdSN, waiting for the gap,
// with the unsolicited Data-Out that came for it meanwhile.
type queued struct {
	c        *Conn
	in       inPDU
	p        pdu.PDU
	f        handler
	dataOuts []inPDU
	dataLen  int
}

var sessionSeq atomic.Int64

type session struct {
	t             *Target
	seq           int64
	tsih          uint16
	isid          [6]byte
	initiatorName string
	targetName    string
	discovery     bool
	params        Params
	depth         uint32

	// expCmdSN is written under mu and read without it to fill PDUs.
	expCmdSN atomic.Uint32

	mu         sync.Mutex
	conns      map[uint16]*Conn
	pending    map[uint32]*queued
	skip       map[uint32]bool // CmdSNs taken by ABORT TASK before they came
	tasks      map[uint32]*task
	recent     []uint32 // ITTs of tasks ended lately, to ignore their stray Data-Out
	texts      map[uint32]*textState
	ua         map[int]sense
	challenges [][]byte
	nextTTT    uint32
	ended      bool
	loggedOut  bool
	// failed marks a session whose last connection ended without a logout:
	// it waits DefaultTime2Retain seconds for a connection to continue or
	// reinstate it, then ends (RFC 7143 §6.3.5, the FAILED state of §8.3).
	failed bool
	retain *time.Timer
	later  []func()
	// erl2 is the connection recovery's state (erl2.go).
	erl2 erl2State
	// replayFrom is the first DataSN respond sends (a TASK REASSIGN's
	// ExpDataSN); 0 but while erl2.go replays a read.
	replayFrom uint32
}

func newSession(t *Target, l *login, tsih uint16) *session {
	s := &session{
		t:             t,
		seq:           sessionSeq.Add(1),
		tsih:          tsih,
		isid:          l.isid,
		initiatorName: l.initiatorName,
		targetName:    l.targetName,
		discovery:     l.discovery,
		params:        l.params,
		depth:         uint32(t.Config.QueueDepth),
		conns:         make(map[uint16]*Conn),
		pending:       make(map[uint32]*queued),
		skip:          make(map[uint32]bool),
		tasks:         make(map[uint32]*task),
		texts:         make(map[uint32]*textState),
		ua:            make(map[int]sense),
		challenges:    l.chap.sent,
		nextTTT:       uint32(tsih) << 16,
	}
	s.expCmdSN.Store(l.cmdSN)
	if t.Config.UnitAttentionOnLogin && !l.discovery {
		for i := range t.luns {
			s.ua[i] = senseUAPowerOn
		}
	}
	return s
}

// window returns ExpCmdSN and MaxCmdSN.
func (s *session) window() (uint32, uint32) {
	exp := s.expCmdSN.Load()
	return exp, exp + s.depth - 1
}

func (s *session) newTTT() uint32 {
	s.nextTTT++
	if s.nextTTT == pdu.ReservedTag {
		s.nextTTT = 0
	}
	return s.nextTTT
}

// carriesCmdSN reports whether the opcode's CmdSN field takes a place in the
// command sequence.
func carriesCmdSN(op pdu.Opcode) bool {
	switch op {
	case pdu.OpNOPOut, pdu.OpSCSICommand, pdu.OpTaskMgmtRequest, pdu.OpTextRequest, pdu.OpLogoutRequest:
		return true
	}
	return false
}

// submit hands a PDU to f (default: the normal handling), in CmdSN order for
// non-immediate commands (RFC 7143 §4.2.2.1): a command ahead of ExpCmdSN
// waits for the gap to fill, one outside the window or already received is
// silently ignored.
func (s *session) submit(c *Conn, in *inPDU, p pdu.PDU, f handler) {
	if f == nil {
		f = (*session).handle
	}
	s.mu.Lock()
	defer s.runLater()
	defer s.mu.Unlock()
	if s.ended {
		return
	}
	if s.params.ErrorRecoveryLevel >= 2 {
		s.acked(c, in) // erl2.go
	}
	if !carriesCmdSN(in.h.Opcode()) || in.h.Immediate() {
		f(s, c, in, p)
		return
	}
	cmdSN := be32(in.h[24:])
	exp, maxSN := s.window()
	switch {
	case cmdSN == exp:
		s.expCmdSN.Store(exp + 1)
		f(s, c, in, p)
		s.drainPending()
	case pdu.SerialLess(exp, cmdSN) && pdu.SerialLessEq(cmdSN, maxSN) && s.pending[cmdSN] == nil:
		q := &queued{c: c, p: p, f: f, in: inPDU{h: in.h, badDigest: in.badDigest}}
		q.in.ahs = slices.Clone(in.ahs)
		q.in.data = slices.Clone(in.data)
		s.pending[cmdSN] = q
	default:
		s.t.log.Debug("command outside the CmdSN window ignored", zap.Uint32("cmdsn", cmdSN),
			zap.Uint32("expcmdsn", exp), zap.Uint32("maxcmdsn", maxSN), zap.Stringer("opcode", in.h.Opcode()))
		s.t.count(func(st *Stats) { st.Dropped++ })
	}
}

// drainPending runs the queued commands that are now in order.
func (s *session) drainPending() {
	for !s.ended {
		exp := s.expCmdSN.Load()
		if s.skip[exp] {
			// Aborted before its turn: it counts as received, and runs not.
			delete(s.skip, exp)
			delete(s.pending, exp)
			s.expCmdSN.Store(exp + 1)
			continue
		}
		q := s.pending[exp]
		if q == nil {
			return
		}
		delete(s.pending, exp)
		s.expCmdSN.Store(exp + 1)
		select {
		case <-q.c.done:
			if s.params.ErrorRecoveryLevel < 2 {
				continue
			}
			// ERL 2: the command came; it runs, and what it answers
			// is kept for a TASK REASSIGN (erl2.go).
		default:
		}
		q.f(s, q.c, &q.in, q.p)
		if len(q.dataOuts) > 0 && s.tasks[be32(q.in.h[16:])] != nil {
			for i := range q.dataOuts {
				d := &q.dataOuts[i]
				var v pdu.DataOut
				v.UnmarshalBHS(&d.h)
				s.dataOut(q.c, d, &v)
			}
		}
	}
}

// holdDataOut keeps an unsolicited Data-Out for a command still waiting for
// its CmdSN; it reports false when there is no such command.
func (s *session) holdDataOut(c *Conn, in *inPDU, v *pdu.DataOut) bool {
	for _, q := range s.pending {
		if q.c != c || q.in.h.Opcode() != pdu.OpSCSICommand || be32(q.in.h[16:]) != v.ITT {
			continue
		}
		if v.TTT != pdu.ReservedTag || q.dataLen+len(in.data) > s.params.FirstBurstLength {
			c.protocolError(&in.h, pdu.RejectProtocolError, "Data-Out beyond the first burst of a queued command")
			return true
		}
		q.dataLen += len(in.data)
		q.dataOuts = append(q.dataOuts, inPDU{h: in.h, data: slices.Clone(in.data), badDigest: in.badDigest})
		return true
	}
	return false
}

// runLater runs what handlers deferred until the session's lock is released.
func (s *session) runLater() {
	for {
		s.mu.Lock()
		fs := s.later
		s.later = nil
		s.mu.Unlock()
		if len(fs) == 0 {
			return
		}
		for _, f := range fs {
			f()
		}
	}
}

// handle is the normal handling of a PDU in full feature phase.
func (s *session) handle(c *Conn, in *inPDU, p pdu.PDU) {
	switch v := p.(type) {
	case *pdu.NOPOut:
		s.nopOut(c, in, v)
	case *pdu.SCSICommand:
		s.scsiCommand(c, in, v)
	case *pdu.DataOut:
		s.dataOut(c, in, v)
	case *pdu.TaskMgmtRequest:
		s.taskMgmt(c, in, v)
	case *pdu.TextRequest:
		s.text(c, in, v)
	case *pdu.LogoutRequest:
		s.logout(c, v, nil)
	case *pdu.SNACKRequest:
		s.snack(c, in, v)
	default:
		c.protocolError(&in.h, pdu.RejectProtocolError, in.h.Opcode().String()+" in full feature phase")
	}
}

func (s *session) nopOut(c *Conn, in *inPDU, v *pdu.NOPOut) {
	if v.ITT == pdu.ReservedTag {
		// An answer to a NOP-In ping, or a ping that wants no answer; either
		// must be immediate (RFC 7143 §11.18).
		if !v.Immediate {
			c.reject(pdu.RejectProtocolError, &in.h)
			return
		}
		if v.TTT != pdu.ReservedTag && !c.nopAnswered(v.TTT) {
			c.reject(pdu.RejectInvalidPDUField, &in.h)
		}
		return
	}
	if v.TTT != pdu.ReservedTag {
		c.reject(pdu.RejectInvalidPDUField, &in.h)
		return
	}
	data := slices.Clone(in.data[:min(len(in.data), c.maxSend)])
	c.enqueue(&pdu.NOPIn{LUN: v.LUN, ITT: v.ITT, TTT: pdu.ReservedTag}, nil, data, false)
}

// logout handles a Logout Request; a, when set, is a hook's chosen answer.
// The session's state changes before the response is queued, so that what
// Sessions reports is already true when the initiator reads the response.
func (s *session) logout(c *Conn, req *pdu.LogoutRequest, a *Action) {
	s.t.count(func(st *Stats) { st.LogoutRequests[req.ReasonCode]++ })
	resp := &pdu.LogoutResponse{ITT: req.ITT}
	if a != nil && a.code != pdu.LogoutSuccess {
		resp.Response, resp.Time2Wait, resp.Time2Retain = a.code, a.t2w, a.t2r
		c.enqueue(resp, nil, nil, false)
		return
	}
	if a != nil {
		resp.Time2Wait, resp.Time2Retain = a.t2w, a.t2r
	}
	switch req.ReasonCode {
	case pdu.LogoutCloseSession:
		others := s.endLocked(true)
		s.t.count(func(st *Stats) { st.Logouts[req.ReasonCode]++ })
		c.loggedOut.Store(true)
		c.enqueue(resp, nil, nil, false)
		c.finish()
		for _, o := range others {
			if o != c {
				// §8.1.3 T8: the other connections are closed without a response.
				o.finish()
			}
		}
	case pdu.LogoutCloseConnection:
		o := s.conns[req.CID]
		if o == nil {
			resp.Response = pdu.LogoutCIDNotFound
			c.enqueue(resp, nil, nil, false)
			return
		}
		delete(s.conns, req.CID)
		s.abortTasks(func(tk *task) bool { return tk.c == o })
		if len(s.conns) == 0 {
			s.endLocked(true)
		}
		s.t.count(func(st *Stats) { st.Logouts[req.ReasonCode]++ })
		o.loggedOut.Store(true)
		c.enqueue(resp, nil, nil, false)
		o.finish()
	case pdu.LogoutRemoveForRecovery:
		if s.params.ErrorRecoveryLevel >= 2 {
			s.logoutForRecovery(c, req, resp) // erl2.go
			return
		}
		// Connection recovery needs ErrorRecoveryLevel 2.
		resp.Response = pdu.LogoutRecoveryUnsupported
		resp.Time2Wait = uint16(s.params.DefaultTime2Wait)
		resp.Time2Retain = uint16(s.params.DefaultTime2Retain)
		c.enqueue(resp, nil, nil, false)
	default:
		var h pdu.BHS
		req.MarshalBHS(&h)
		c.reject(pdu.RejectInvalidPDUField, &h)
	}
}

// endLocked ends the session: no connection, task or command survives. It
// returns the connections it had, for the caller to close.
func (s *session) endLocked(loggedOut bool) []*Conn {
	if s.ended {
		return nil
	}
	s.ended, s.loggedOut, s.failed = true, loggedOut, false
	if s.retain != nil {
		s.retain.Stop()
	}
	conns := make([]*Conn, 0, len(s.conns))
	for _, c := range s.conns {
		conns = append(conns, c)
	}
	clear(s.conns)
	clear(s.pending)
	s.abortTasks(func(*task) bool { return true })
	s.later = append(s.later, func() { s.t.retire(s) })
	return conns
}

// end ends the session from outside its handlers and closes its connections.
func (s *session) end(loggedOut bool) {
	s.mu.Lock()
	conns := s.endLocked(loggedOut)
	s.mu.Unlock()
	s.runLater()
	for _, c := range conns {
		c.finish()
	}
}

// connGone takes a connection that ended out of the session, and its
// tasks (ErrorRecoveryLevel 0 recovers none). A session that loses its last
// connection without a logout fails: its state is kept DefaultTime2Retain
// seconds.
func (s *session) connGone(c *Conn) {
	s.mu.Lock()
	if s.conns[c.cid] == c {
		delete(s.conns, c.cid)
	}
	s.dropConnTasks(c) // erl2.go: kept for reassignment at ERL 2
	switch {
	case len(s.conns) > 0 || s.ended || s.failed:
	case c.loggedOut.Load() || s.params.DefaultTime2Retain == 0:
		s.endLocked(c.loggedOut.Load())
	default:
		s.failed = true
		clear(s.pending)
		s.retain = time.AfterFunc(time.Duration(s.params.DefaultTime2Retain)*time.Second, s.retainExpired)
	}
	s.mu.Unlock()
	s.runLater()
}

// retainExpired ends a failed session whose Time2Retain passed (the
// session timeout of §6.3.5).
func (s *session) retainExpired() {
	if !s.t.track() {
		return
	}
	defer s.t.wg.Done()
	s.mu.Lock()
	if s.failed && len(s.conns) == 0 {
		s.endLocked(false)
	}
	s.mu.Unlock()
	s.runLater()
}

// addConn adds a connection that finished its login; the connection it
// reinstates, if any, is returned for the caller to close.
func (s *session) addConn(c *Conn) (old *Conn, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return nil, false
	}
	old = s.conns[c.cid]
	if old == nil && len(s.conns) >= s.params.MaxConnections {
		return nil, false
	}
	if s.failed {
		// Session continuation: a connection joins the failed session.
		s.failed = false
		s.retain.Stop()
	}
	if old != nil {
		s.dropConnTasks(old) // erl2.go: kept for reassignment at ERL 2
	}
	s.conns[c.cid] = c
	return old, true
}

func (s *session) info() SessionInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	si := SessionInfo{TSIH: s.tsih, ISID: s.isid, InitiatorName: s.initiatorName, TargetName: s.targetName,
		Discovery: s.discovery, LoggedOut: s.loggedOut, Ended: s.ended, Failed: s.failed, Params: s.params}
	for cid, c := range s.conns {
		si.CIDs = append(si.CIDs, cid)
		si.Conns = append(si.Conns, ConnInfo{CID: cid, RemoteAddr: c.nc.RemoteAddr().String(),
			HeaderDigest: c.hdig, DataDigest: c.ddig, MaxRecvDataSegmentLength: c.maxSend})
	}
	slices.Sort(si.CIDs)
	slices.SortFunc(si.Conns, func(a, b ConnInfo) int { return int(a.CID) - int(b.CID) })
	return si
}

func be32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}
