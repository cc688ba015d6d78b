package capture

import (
	"encoding/binary"

	"github.com/goiscsi/iscsi/pdu"
)

// What this file knows about an opcode beyond package pdu: which flag bits
// RFC 7143 fixes, which the resynchronizing scan uses to tell a header from
// bytes of a data segment.

// finalAlways reports whether RFC 7143 fixes op's F bit at 1.
func finalAlways(op pdu.Opcode) bool {
	switch op {
	case pdu.OpNOPOut, pdu.OpNOPIn, pdu.OpTaskMgmtRequest, pdu.OpTaskMgmtResponse,
		pdu.OpLogoutRequest, pdu.OpLogoutResponse, pdu.OpSNACKRequest, pdu.OpSCSIResponse,
		pdu.OpR2T, pdu.OpAsyncMessage, pdu.OpReject:
		return true
	}
	return false
}

// padLen returns the number of padding bytes after n bytes of data.
func padLen(n int) int { return -n & 3 }

// layout gives the byte offsets of one PDU's parts.
type layout struct {
	ahs   int // length of the additional header segments
	data  int // DataSegmentLength
	total int // every byte of the PDU, digests and padding included
	// hdig and ddig say whether the PDU carries a header and a data digest.
	hdig, ddig bool
}

// isLogin reports whether op is a login PDU. Digests take effect when login
// ends (RFC 7143 §13.1), so login PDUs never carry them.
func isLogin(op pdu.Opcode) bool { return op == pdu.OpLoginRequest || op == pdu.OpLoginResponse }

// framing returns the layout of the PDU whose header is h, or false when h
// cannot start a PDU that from sends: an undefined opcode, an opcode of the
// other side, or lengths the opcode does not allow. from 0 accepts either side.
// hdig and ddig say whether the connection negotiated digests.
func framing(h *pdu.BHS, from pdu.Direction, maxData int, hdig, ddig bool) (layout, bool) {
	op := h.Opcode()
	if !op.Valid() || from != 0 && op.Direction() != from || h[0]&0x80 != 0 {
		return layout{}, false
	}
	l := layout{ahs: h.TotalAHSLength(), data: h.DataSegmentLength()}
	if l.ahs > 0 && !op.MayCarryAHS() || l.data > 0 && !op.MayCarryData() || l.data > maxData {
		return layout{}, false
	}
	l.hdig = hdig && !isLogin(op)
	l.ddig = ddig && !isLogin(op) && l.data > 0
	l.total = pdu.BHSLen + l.ahs + l.data + padLen(l.data)
	if l.hdig {
		l.total += pdu.DigestLen
	}
	if l.ddig {
		l.total += pdu.DigestLen
	}
	return l, true
}

// plausible is framing with the fixed bits RFC 7143 sets checked too, and
// the header decoded: what the scan for a header after losing its place
// demands of a candidate.
func plausible(h *pdu.BHS, from pdu.Direction, maxData int, hdig, ddig bool) (layout, bool) {
	l, ok := framing(h, from, maxData, hdig, ddig)
	if !ok {
		return l, false
	}
	op := h.Opcode()
	if op.Direction() == pdu.FromTarget && h[0]&0x40 != 0 {
		return l, false // the I bit is reserved in target PDUs
	}
	if finalAlways(op) && h[1]&0x80 == 0 {
		return l, false
	}
	switch op {
	case pdu.OpLoginRequest, pdu.OpLoginResponse:
		// CSG and NSG 2 are reserved; a login request is always immediate.
		if h[1]>>2&3 == 2 || h[1]&3 == 2 || op == pdu.OpLoginRequest && h[0]&0x40 == 0 {
			return l, false
		}
	case pdu.OpSCSIDataOut, pdu.OpSCSIDataIn:
		if l.data == 0 && h[1]&0x01 == 0 {
			return l, false // only a Data-In with status may be empty
		}
	}
	if _, err := pdu.Decode(h); err != nil {
		return l, false
	}
	return l, true
}

// le32 reads a digest as it is on the wire, least significant byte first.
func le32(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }
