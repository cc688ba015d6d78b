package iscsitest

import (
	"slices"
	"strings"
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

// maxTexts bounds the text exchanges in progress in a session.
const maxTexts = 16

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
	if s.nextTTT == 0xffffffff {
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
			delete(s.skip, exp)
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
			continue
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
		if v.TTT != 0xffffffff || q.dataLen+len(in.data) > s.params.FirstBurstLength {
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
		// SNACK needs ErrorRecoveryLevel 1 or more.
		c.reject(pdu.RejectProtocolError, &in.h)
	default:
		c.protocolError(&in.h, pdu.RejectProtocolError, in.h.Opcode().String()+" in full feature phase")
	}
}

func (s *session) nopOut(c *Conn, in *inPDU, v *pdu.NOPOut) {
	if v.ITT == 0xffffffff {
		// An answer to a NOP-In ping, or a ping that wants no answer; either
		// must be immediate (RFC 7143 §11.18).
		if !v.Immediate {
			c.reject(pdu.RejectProtocolError, &in.h)
			return
		}
		if v.TTT != 0xffffffff && !c.nopAnswered(v.TTT) {
			c.reject(pdu.RejectInvalidPDUField, &in.h)
		}
		return
	}
	if v.TTT != 0xffffffff {
		c.reject(pdu.RejectInvalidPDUField, &in.h)
		return
	}
	data := slices.Clone(in.data[:min(len(in.data), c.maxSend)])
	c.enqueue(&pdu.NOPIn{LUN: v.LUN, ITT: v.ITT, TTT: 0xffffffff}, nil, data, false)
}

// textState is a text exchange in progress: the request text gathered from
// PDUs with the C bit, or the rest of a response too long for one PDU.
type textState struct {
	req  []byte
	resp []byte
	ttt  uint32
}

func (s *session) text(c *Conn, in *inPDU, v *pdu.TextRequest) {
	st := s.texts[v.ITT]
	if v.TTT != 0xffffffff {
		if st == nil || st.ttt != v.TTT || len(st.resp) == 0 || len(in.data) > 0 {
			c.reject(pdu.RejectInvalidPDUField, &in.h)
			return
		}
		s.textChunk(c, v, st)
		return
	}
	if st == nil || len(st.resp) > 0 {
		if st == nil && len(s.texts) >= maxTexts {
			c.reject(pdu.RejectProtocolError, &in.h)
			return
		}
		st = &textState{}
		s.texts[v.ITT] = st
	}
	if len(st.req)+len(in.data) > maxLoginText || v.Final && v.Continue {
		delete(s.texts, v.ITT)
		c.reject(pdu.RejectProtocolError, &in.h)
		return
	}
	st.req = append(st.req, in.data...)
	if v.Continue {
		c.enqueue(&pdu.TextResponse{LUN: v.LUN, ITT: v.ITT, TTT: 0xffffffff}, nil, nil, false)
		return
	}
	kvs, err := parseText(st.req, pdu.TextLimits{})
	st.req = nil
	if err != nil {
		delete(s.texts, v.ITT)
		c.reject(pdu.RejectProtocolError, &in.h)
		return
	}
	var out []byte
	for _, kv := range kvs {
		out = s.textKey(c, kv, out)
	}
	st.resp = out
	s.textChunk(c, v, st)
}

// textKey answers one key of a Text Request in full feature phase.
func (s *session) textKey(c *Conn, kv pdu.KV, out []byte) []byte {
	switch kv.Key {
	case "SendTargets":
		name := s.t.Config.Name
		switch {
		case kv.Value == "All" && !s.discovery:
			return pdu.AppendText(out, pdu.KV{Key: kv.Key, Value: "Reject"})
		case kv.Value == "All" || kv.Value == "" || strings.EqualFold(kv.Value, name):
			return pdu.AppendText(out, pdu.KV{Key: "TargetName", Value: name},
				pdu.KV{Key: "TargetAddress", Value: s.t.portal()})
		}
		return out
	case "MaxRecvDataSegmentLength":
		if n, err := pdu.ParseNumber(kv.Value); err == nil && n >= 512 && n <= pdu.MaxDataSegmentLength {
			c.maxSend = int(n)
			return out
		}
		return pdu.AppendText(out, pdu.KV{Key: kv.Key, Value: "Reject"})
	}
	if keyKnown(kv.Key) {
		// Login-only and leading-only keys cannot be renegotiated.
		return pdu.AppendText(out, pdu.KV{Key: kv.Key, Value: "Reject"})
	}
	return pdu.AppendText(out, pdu.KV{Key: kv.Key, Value: "NotUnderstood"})
}

// textChunk sends as much of a text response as the initiator accepts in
// one PDU; more follows when it asks with the TTT.
func (s *session) textChunk(c *Conn, v *pdu.TextRequest, st *textState) {
	n := min(len(st.resp), c.maxSend)
	chunk := st.resp[:n]
	st.resp = st.resp[n:]
	resp := &pdu.TextResponse{LUN: v.LUN, ITT: v.ITT, TTT: 0xffffffff, Final: true}
	if len(st.resp) > 0 {
		st.ttt = s.newTTT()
		resp.Final, resp.Continue, resp.TTT = false, true, st.ttt
	} else {
		delete(s.texts, v.ITT)
	}
	c.enqueue(resp, nil, chunk, false)
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
		// Connection recovery needs ErrorRecoveryLevel 2; this target does 0.
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
	s.abortTasks(func(tk *task) bool { return tk.c == c })
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
		s.abortTasks(func(tk *task) bool { return tk.c == old })
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
		resp.Response = pdu.TMFReassignUnsupported
	default:
		resp.Response = pdu.TMFNotSupported
	}
	c.enqueue(resp, nil, nil, false)
}

// abortTask carries out ABORT TASK (RFC 7143 §11.5.1).
func (s *session) abortTask(v *pdu.TaskMgmtRequest) uint8 {
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

func be32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}
