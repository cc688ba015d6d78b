package iscsitest

import (
	"slices"

	"github.com/goiscsi/iscsi/pdu"
)

// Within-connection recovery, ErrorRecoveryLevel 1: at that level a
// connection keeps the Data-In, R2T and status PDUs (SCSI Response, NOP-In
// answering a NOP-Out, Text Response) it sent (copies, within
// maxKeptBytes and maxKeptPDUs: the oldest go first) and answers a SNACK by
// sending again the ones it asks for, unchanged (the same DataSN, R2TSN and
// StatSN: RFC 7143 §11.16). A SNACK for what is no longer kept, or at ERL 0,
// is rejected.

// Bounds of what a connection keeps for resending.
const (
	maxKeptBytes = 16 << 20
	maxKeptPDUs  = 4096
)

// retained is what a connection keeps for resending; guarded by outMu.
type retained struct {
	pdus  []keptPDU
	bytes int
}

// keptPDU is one PDU kept: its header as sent and a copy of its data.
type keptPDU struct {
	h      pdu.BHS
	ahs    []byte
	data   []byte
	itt    uint32
	op     pdu.Opcode
	sn     uint32 // DataSN of a Data-In, R2TSN of an R2T
	statSN uint32
	status bool // carries status: a SCSI Response, a Data-In with S
}

// retainLocked keeps p, just queued as it, for resending at ERL 1; the
// caller holds outMu.
func (c *Conn) retainLocked(p pdu.PDU, it *outItem) {
	s := c.sess.Load()
	if s == nil || s.params.ErrorRecoveryLevel < 1 {
		return
	}
	k := keptPDU{h: it.h, op: p.Opcode()}
	switch v := p.(type) {
	case *pdu.DataIn:
		k.itt, k.sn, k.status, k.statSN = v.ITT, v.DataSN, v.HasStatus, v.StatSN
	case *pdu.R2T:
		k.itt, k.sn = v.ITT, v.R2TSN
	case *pdu.SCSIResponse:
		k.itt, k.status, k.statSN = v.ITT, true, v.StatSN
	case *pdu.NOPIn:
		if v.ITT == pdu.ReservedTag {
			return // a ping takes no StatSN: it is not asked for again
		}
		k.itt, k.status, k.statSN = v.ITT, true, v.StatSN
	case *pdu.TextResponse:
		k.itt, k.status, k.statSN = v.ITT, true, v.StatSN
	default:
		return
	}
	k.ahs, k.data = slices.Clone(it.ahs), slices.Clone(it.data)
	kp := &c.kept
	kp.pdus = append(kp.pdus, k)
	kp.bytes += len(k.data)
	for len(kp.pdus) > maxKeptPDUs || kp.bytes > maxKeptBytes {
		kp.bytes -= len(kp.pdus[0].data)
		kp.pdus[0] = keptPDU{}
		kp.pdus = kp.pdus[1:]
	}
}

// inRun reports whether sn is in the run of runLength from begRun; a
// RunLength of 0 is every number from begRun on.
func inRun(sn, begRun, runLength uint32) bool {
	d := sn - begRun
	if runLength == 0 {
		return d < 1<<31
	}
	return d < runLength
}

// snack answers a SNACK Request: Data SNACK (type 0) for a read's Data-In
// or a write's R2Ts, Status SNACK (type 1), by sending the PDUs asked for
// again.
func (s *session) snack(c *Conn, in *inPDU, v *pdu.SNACKRequest) {
	if s.params.ErrorRecoveryLevel < 1 {
		// SNACK needs ErrorRecoveryLevel 1 or more.
		c.reject(pdu.RejectProtocolError, &in.h)
		return
	}
	var again []keptPDU
	c.outMu.Lock()
	for _, k := range c.kept.pdus {
		switch v.Type {
		case pdu.SNACKData:
			if k.itt == v.ITT && (k.op == pdu.OpSCSIDataIn || k.op == pdu.OpR2T) && inRun(k.sn, v.BegRun, v.RunLength) {
				again = append(again, k)
			}
		case pdu.SNACKStatus:
			if k.status && inRun(k.statSN, v.BegRun, v.RunLength) {
				again = append(again, k)
			}
		}
	}
	c.outMu.Unlock()
	if len(again) == 0 {
		// Nothing of the run is kept, or a SNACK type this target does
		// not do (DataACK, R-Data).
		c.reject(pdu.RejectSNACKReject, &in.h)
		return
	}
	for _, k := range again {
		c.push(outItem{kind: itemPDU, h: k.h, ahs: k.ahs, data: k.data, resend: true})
	}
	s.t.count(func(st *Stats) { st.Resent += len(again) })
}
