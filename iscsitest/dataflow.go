package iscsitest

import (
	"encoding/binary"

	"github.com/goiscsi/iscsi/pdu"
)

// task is a command that comes with data-out: it lives from the SCSI
// Command until all its data is in (immediate, unsolicited, then solicited
// by R2T).
type task struct {
	c    *Conn
	itt  uint32
	lun  int
	lunF pdu.LUN
	cdb  [16]byte
	read bool
	edtl uint32
	// need is how much data the command takes: min(EDTL, the CDB's
	// transfer length), 0 for a command that takes none or fails anyway.
	need    uint32
	wantOut int
	buf     []byte // the data kept, need bytes; nil when none is
	off     int64  // where the data goes on the LUN
	fail    *result

	// Unsolicited Data-Out: expected while unsol, from unsolNext, up to
	// unsolLimit, DataSN from 0.
	unsol      bool
	unsolNext  uint32
	unsolLimit uint32
	unsolSN    uint32
	// Solicited data: next is the first byte not yet asked for.
	next  uint32
	r2tSN uint32
	r2ts  map[uint32]*r2t
	// missing are the ranges (offset, length) whose Data-Out failed the
	// data digest at ErrorRecoveryLevel 1: asked for again with a
	// recovery R2T.
	missing [][2]uint32
}

// r2t is an outstanding R2T: a sequence of Data-Out the target asked for.
type r2t struct {
	off, length, got uint32
	dataSN           uint32
}

func (s *session) scsiCommand(c *Conn, in *inPDU, v *pdu.SCSICommand) {
	if s.discovery {
		c.reject(pdu.RejectProtocolError, &in.h)
		return
	}
	if s.tasks[v.ITT] != nil {
		c.reject(pdu.RejectTaskInProgress, &in.h)
		return
	}
	imm := in.data
	p := &s.params
	unsolLimit := min(uint32(p.FirstBurstLength), v.ExpectedDataTransferLength)
	switch {
	case len(imm) > 0 && (!v.Write || !p.ImmediateData || uint32(len(imm)) > unsolLimit):
		// Immediate data the initiator may not send (RFC 7143 §4.2.5.1).
		c.reject(pdu.RejectProtocolError, &in.h)
		return
	case !v.Final && (!v.Write || p.InitialR2T || uint32(len(imm)) >= unsolLimit):
		// F=0 announces unsolicited Data-Out, which must fit in the first burst.
		c.reject(pdu.RejectProtocolError, &in.h)
		return
	case in.badDigest:
		c.reject(pdu.RejectDataDigestError, &in.h)
		return
	}
	if v.Write && v.ExpectedDataTransferLength > 0 {
		s.startWrite(c, v, imm, unsolLimit)
		return
	}
	res := s.execute(v.LUN.Number(), v.CDB[:], nil, nil)
	s.respond(c, v.ITT, v.Read, v.Write, v.ExpectedDataTransferLength, res, 0)
}

func (s *session) startWrite(c *Conn, v *pdu.SCSICommand, imm []byte, unsolLimit uint32) {
	tk := &task{c: c, itt: v.ITT, lun: v.LUN.Number(), lunF: v.LUN, cdb: v.CDB, read: v.Read,
		edtl: v.ExpectedDataTransferLength, unsol: !v.Final, unsolNext: uint32(len(imm)), unsolLimit: unsolLimit,
		r2ts: map[uint32]*r2t{}}
	if len(s.tasks) >= 2*int(s.depth) {
		s.endTask(tk)
		s.respond(c, v.ITT, false, true, tk.edtl, result{status: pdu.StatusTaskSetFull}, 0)
		return
	}
	off, tl, isWrite, fail := s.checkWrite(tk.lun, v.CDB[:])
	tk.wantOut = tl
	switch {
	case fail != nil:
		tk.fail = fail
	case uint64(tk.edtl) < uint64(tl) && tk.edtl%BlockSize != 0:
		// Less than the CDB asks for, and not whole blocks.
		tk.fail = failed(senseInvalidFieldInIU)
	case isWrite:
		// RFC 7143 §11.4.5: write what both EDTL and the CDB cover and
		// report the rest as residual.
		tk.need = min(tk.edtl, uint32(tl))
		tk.buf = make([]byte, tk.need)
		tk.off = off
		copy(tk.buf, imm)
	}
	if tk.fail != nil {
		tk.fail.wantOut = tl
	}
	tk.next = tk.unsolNext
	s.tasks[tk.itt] = tk
	s.advance(tk)
}

func (s *session) dataOut(c *Conn, in *inPDU, v *pdu.DataOut) {
	tk := s.tasks[v.ITT]
	if tk == nil {
		if s.holdDataOut(c, in, v) {
			return
		}
		for _, itt := range s.recent {
			if itt == v.ITT {
				return // data of a task already ended or aborted
			}
		}
		c.reject(pdu.RejectInvalidPDUField, &in.h)
		return
	}
	if tk.c != c {
		c.protocolError(&in.h, pdu.RejectProtocolError, "Data-Out on another connection than its command")
		return
	}
	n := uint32(len(in.data))
	var at uint32
	if v.TTT == pdu.ReservedTag {
		switch {
		case !tk.unsol:
			c.protocolError(&in.h, pdu.RejectProtocolError, "unsolicited Data-Out not expected")
			return
		case v.DataSN != tk.unsolSN, v.BufferOffset != tk.unsolNext, n > tk.unsolLimit-tk.unsolNext,
			!v.Final && tk.unsolNext+n == tk.unsolLimit:
			c.protocolError(&in.h, pdu.RejectProtocolError, "unsolicited Data-Out out of sequence or past FirstBurstLength")
			return
		}
		at = tk.unsolNext
		tk.unsolSN++
		tk.unsolNext += n
		if v.Final {
			tk.unsol = false
			tk.next = tk.unsolNext
		}
	} else {
		r := tk.r2ts[v.TTT]
		switch {
		case r == nil:
			c.protocolError(&in.h, pdu.RejectInvalidPDUField, "Data-Out with an unknown Target Transfer Tag")
			return
		case v.DataSN != r.dataSN, v.BufferOffset != r.off+r.got, n > r.length-r.got,
			v.Final != (r.got+n == r.length):
			c.protocolError(&in.h, pdu.RejectProtocolError, "solicited Data-Out out of sequence or past the R2T")
			return
		}
		at = v.BufferOffset
		r.got += n
		r.dataSN++
		if v.Final {
			delete(tk.r2ts, v.TTT)
		}
	}
	if in.badDigest && s.params.ErrorRecoveryLevel >= 1 {
		// RFC 7143 §7.8 at ERL 1: reject the PDU, ask for its data again
		// with a recovery R2T.
		s.t.count(func(st *Stats) { st.DigestErrors++ })
		c.reject(pdu.RejectDataDigestError, &in.h)
		if n > 0 {
			tk.missing = append(tk.missing, [2]uint32{at, n})
		}
	} else if in.badDigest {
		// RFC 7143 §7.8: reject the PDU, end the task with CHECK CONDITION
		// once its data is all in.
		s.t.count(func(st *Stats) { st.DigestErrors++ })
		c.reject(pdu.RejectDataDigestError, &in.h)
		f := checkCondition(senseProtocolCRC)
		tk.fail, tk.buf = &f, nil
	} else if at < uint32(len(tk.buf)) {
		copy(tk.buf[at:], in.data)
	}
	s.advance(tk)
}

// advance moves a write on: more R2Ts, or the response once the data is in.
func (s *session) advance(tk *task) {
	if tk.unsol {
		return
	}
	if tk.fail != nil {
		if len(tk.r2ts) == 0 {
			s.endTask(tk)
			s.respond(tk.c, tk.itt, false, true, tk.edtl, *tk.fail, tk.r2tSN)
		}
		return
	}
	p := &s.params
	for len(tk.missing) > 0 && len(tk.r2ts) < p.MaxOutstandingR2T {
		// A recovery R2T for data that failed its digest.
		m := tk.missing[0]
		tk.missing = tk.missing[1:]
		ttt := s.newTTT()
		tk.r2ts[ttt] = &r2t{off: m[0], length: m[1]}
		tk.c.enqueue(&pdu.R2T{LUN: tk.lunF, ITT: tk.itt, TTT: ttt, R2TSN: tk.r2tSN, BufferOffset: m[0],
			DesiredDataTransferLength: m[1]}, nil, nil, false)
		tk.r2tSN++
		s.t.count(func(st *Stats) { st.Resent++ })
	}
	if len(tk.r2ts) == 0 && len(tk.missing) == 0 && tk.next >= tk.need {
		s.endTask(tk)
		res := result{status: pdu.StatusGood, wantOut: tk.wantOut}
		if tk.buf != nil {
			s.execute(tk.lun, tk.cdb[:], tk.buf, &tk.off)
		} else {
			// A command that takes no data-out: run it, the data is dropped.
			res = s.execute(tk.lun, tk.cdb[:], nil, nil)
		}
		s.respond(tk.c, tk.itt, tk.read, true, tk.edtl, res, tk.r2tSN)
		return
	}
	for len(tk.r2ts) < p.MaxOutstandingR2T && tk.next < tk.need {
		length := min(uint32(p.MaxBurstLength), tk.need-tk.next)
		ttt := s.newTTT()
		tk.r2ts[ttt] = &r2t{off: tk.next, length: length}
		tk.c.enqueue(&pdu.R2T{LUN: tk.lunF, ITT: tk.itt, TTT: ttt, R2TSN: tk.r2tSN, BufferOffset: tk.next,
			DesiredDataTransferLength: length}, nil, nil, false)
		tk.r2tSN++
		tk.next += length
	}
}

// respond sends a command's data and status: Data-In PDUs no longer than the
// initiator's MaxRecvDataSegmentLength, in sequences of at most
// MaxBurstLength, with the status in the last one when it can go there,
// else in a SCSI Response. expDataSN counts the R2Ts a write had. The
// LUN memory a READ's data points into is released once its last PDU is
// written.
func (s *session) respond(c *Conn, itt uint32, read, write bool, edtl uint32, res result, expDataSN uint32) {
	if s.params.ErrorRecoveryLevel >= 2 {
		// Kept until acknowledged, for TASK REASSIGN (erl2.go).
		defer s.keep(c, s.keepResponse(itt, read, write, edtl, res, expDataSN))
	}
	size := uint32(res.dataLen())
	var over, under bool
	var resid uint32
	switch {
	case write || res.wantOut > 0:
		// Residuals count the data-out; data-in is sent only with R.
		out, tl := uint32(0), uint32(res.wantOut)
		if write {
			out = edtl
		}
		if out > tl {
			under, resid = true, out-tl
		} else if out < tl {
			over, resid = true, tl-out
		}
		if !read {
			size = 0
		} else {
			size = min(size, edtl)
		}
	case read:
		if size > edtl {
			over, resid, size = true, size-edtl, edtl
		} else if size < edtl {
			under, resid = true, edtl-size
		}
	case size > 0:
		over, resid, size = true, size, 0
	case edtl > 0:
		under, resid = true, edtl
	}
	inData := size > 0 && res.sense == nil && !s.t.Config.SeparateReadStatus
	burst := s.params.MaxBurstLength
	var dataSN uint32
	for off := 0; off < int(size); {
		n := min(int(size)-off, c.maxSend, burst-off%burst)
		end := off+n == int(size)
		d := &pdu.DataIn{ITT: itt, TTT: pdu.ReservedTag, DataSN: dataSN, BufferOffset: uint32(off),
			Final: end || (off+n)%burst == 0}
		var release *lunView
		if end && inData {
			d.HasStatus, d.Status, d.Overflow, d.Underflow, d.ResidualCount = true, res.status, over, under, resid
			release = res.view
		}
		if dataSN >= s.replayFrom {
			c.enqueueData(d, res.dataAt(off, n), release)
		}
		off += n
		dataSN++
	}
	if inData {
		return
	}
	if read {
		expDataSN = dataSN
	}
	var sense []byte
	if res.sense != nil {
		sense = make([]byte, 2+len(res.sense))
		binary.BigEndian.PutUint16(sense, uint16(len(res.sense)))
		copy(sense[2:], res.sense)
	}
	c.enqueueData(&pdu.SCSIResponse{ITT: itt, Response: pdu.RespCommandCompleted, Status: res.status,
		Overflow: over, Underflow: under, ResidualCount: resid, ExpDataSN: expDataSN}, sense, res.view)
}
