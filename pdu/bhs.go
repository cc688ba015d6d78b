package pdu

import (
	"encoding/binary"
	"fmt"
)

// BHSLen is the length of the Basic Header Segment.
const BHSLen = 48

// MaxDataSegmentLength is the largest DataSegmentLength the 24-bit field can
// carry; RFC 7143 limits MaxRecvDataSegmentLength to 2^24-1.
const MaxDataSegmentLength = 1<<24 - 1

// MaxAHSLength is the largest total length of additional header segments:
// TotalAHSLength is an 8-bit count of 4-byte words.
const MaxAHSLength = 255 * 4

// ReservedTag is the tag value 0xffffffff that RFC 7143 §11.1 reserves: an
// ITT or TTT that names no task (a NOP-In ping, an unsolicited Data-Out, an
// asynchronous message).
const ReservedTag uint32 = 0xffffffff

// BHS is the raw 48-byte Basic Header Segment. Its accessors read the fields
// every opcode shares; the per-opcode types read the rest.
type BHS [BHSLen]byte

// Opcode returns the opcode in byte 0.
func (h *BHS) Opcode() Opcode { return Opcode(h[0] & 0x3f) }

// Immediate reports the I bit of a request.
func (h *BHS) Immediate() bool { return h[0]&0x40 != 0 }

// Final reports the F bit in byte 1.
func (h *BHS) Final() bool { return h[1]&0x80 != 0 }

// TotalAHSLength returns the length of the additional header segments in bytes.
func (h *BHS) TotalAHSLength() int { return int(h[4]) * 4 }

// DataSegmentLength returns the length of the data segment without padding.
func (h *BHS) DataSegmentLength() int {
	return int(h[5])<<16 | int(h[6])<<8 | int(h[7])
}

// ITT returns the Initiator Task Tag in bytes 16-19.
func (h *BHS) ITT() uint32 { return binary.BigEndian.Uint32(h[16:20]) }

// CmdSN returns bytes 24-27, the CmdSN of an initiator's command PDU (SCSI
// Command, Task Management, Text, Logout, NOP-Out). Other opcodes keep other
// fields there.
func (h *BHS) CmdSN() uint32 { return binary.BigEndian.Uint32(h[24:28]) }

// SetLengths stores TotalAHSLength (in bytes, a multiple of 4) and
// DataSegmentLength.
func (h *BHS) SetLengths(ahsLen, dataLen int) {
	h[4] = byte(ahsLen / 4)
	h[5] = byte(dataLen >> 16)
	h[6] = byte(dataLen >> 8)
	h[7] = byte(dataLen)
}

// PDU is one iSCSI PDU's header fields. MarshalBHS writes every field the type
// holds into h (it leaves TotalAHSLength and DataSegmentLength, which the
// Writer fills from the segments it sends); UnmarshalBHS resets the value and
// reads it from h, failing if h carries another opcode.
type PDU interface {
	Opcode() Opcode
	MarshalBHS(h *BHS)
	UnmarshalBHS(h *BHS) error
}

// Decode returns the PDU in h as a value of its own type.
func Decode(h *BHS) (PDU, error) {
	p := New(h.Opcode())
	if p == nil {
		return nil, &ProtocolError{Op: h.Opcode(), Field: "Opcode", Value: uint64(h.Opcode()), Reason: "undefined opcode"}
	}
	if err := p.UnmarshalBHS(h); err != nil {
		return nil, err
	}
	return p, nil
}

// ProtocolError reports a PDU field whose value breaks RFC 7143 or a
// negotiated limit. A connection that meets one cannot continue.
//
// Op is the opcode in the offending header, even an undefined one (which
// Error leaves out). Set it: the zero Opcode is NOP-Out.
type ProtocolError struct {
	Op     Opcode // opcode of the PDU
	Field  string // the field, as RFC 7143 names it
	Value  uint64 // the value received
	Reason string // what is wrong with it
}

func (e *ProtocolError) Error() string {
	if e.Op.Valid() {
		return fmt.Sprintf("iscsi: %s: %s %d (0x%x): %s", e.Op, e.Field, e.Value, e.Value, e.Reason)
	}
	return fmt.Sprintf("iscsi: %s %d (0x%x): %s", e.Field, e.Value, e.Value, e.Reason)
}

func errOpcode(want Opcode, h *BHS) error {
	return &ProtocolError{Op: h.Opcode(), Field: "Opcode", Value: uint64(h.Opcode()), Reason: "expected " + want.String()}
}

// LUN is the 8-byte Logical Unit Number field as it is on the wire.
type LUN uint64

// MakeLUN encodes LUN number n with SAM peripheral (n < 256) or flat
// (n < 16384) addressing, as targets report them in REPORT LUNS. Only the
// low 14 bits of a larger n are kept; n must not be negative.
func MakeLUN(n int) LUN {
	if 0 <= n && n < 256 {
		return LUN(uint64(n) << 48)
	}
	return LUN(uint64(0x4000|n&0x3fff) << 48)
}

// Number returns the LUN number for peripheral and flat addressing.
func (l LUN) Number() int {
	top := uint16(l >> 48)
	switch top >> 14 {
	case 0:
		return int(top & 0xff)
	case 1:
		return int(top & 0x3fff)
	}
	return int(top)
}

// SerialLess reports whether a precedes b in RFC 1982 serial number
// arithmetic with SERIAL_BITS 32, as RFC 7143 compares CmdSN, StatSN and DataSN.
// RFC 1982 leaves the comparison undefined when a and b are 2^31 apart; then
// SerialLess reports false both ways, so neither number is taken as newer and
// a window check built on it refuses the value.
func SerialLess(a, b uint32) bool {
	return a != b && int32(b-a) > 0
}

// SerialLessEq reports whether a precedes or equals b in serial arithmetic.
func SerialLessEq(a, b uint32) bool { return a == b || SerialLess(a, b) }

var be = binary.BigEndian

func u32(b []byte) uint32      { return be.Uint32(b) }
func put32(b []byte, v uint32) { be.PutUint32(b, v) }
func u16(b []byte) uint16      { return be.Uint16(b) }
func put16(b []byte, v uint16) { be.PutUint16(b, v) }
