package pdu

import "fmt"

// Opcode is the 6-bit operation code in byte 0 of every Basic Header Segment.
type Opcode uint8

// Initiator opcodes (RFC 7143 §11.1.1).
const (
	OpNOPOut          Opcode = 0x00
	OpSCSICommand     Opcode = 0x01
	OpTaskMgmtRequest Opcode = 0x02
	OpLoginRequest    Opcode = 0x03
	OpTextRequest     Opcode = 0x04
	OpSCSIDataOut     Opcode = 0x05
	OpLogoutRequest   Opcode = 0x06
	OpSNACKRequest    Opcode = 0x10
)

// Target opcodes (RFC 7143 §11.1.1).
const (
	OpNOPIn            Opcode = 0x20
	OpSCSIResponse     Opcode = 0x21
	OpTaskMgmtResponse Opcode = 0x22
	OpLoginResponse    Opcode = 0x23
	OpTextResponse     Opcode = 0x24
	OpSCSIDataIn       Opcode = 0x25
	OpLogoutResponse   Opcode = 0x26
	OpR2T              Opcode = 0x31
	OpAsyncMessage     Opcode = 0x32
	OpReject           Opcode = 0x3f
)

// Direction says which side of a connection sends an opcode.
type Direction uint8

// Directions of PDUs.
const (
	FromInitiator Direction = 1
	FromTarget    Direction = 2
)

// opInfo is what the codec knows about one opcode.
type opInfo struct {
	name string
	dir  Direction
	// data reports whether the PDU may carry a data segment.
	data bool
	// ahs reports whether the PDU may carry additional header segments.
	ahs bool
	// new returns an empty value of the PDU's type.
	new func() PDU
}

// ops is indexed by opcode; a zero entry is an opcode RFC 7143 does not define.
var ops = [64]opInfo{
	OpNOPOut:           {"NOP-Out", FromInitiator, true, false, func() PDU { return new(NOPOut) }},
	OpSCSICommand:      {"SCSI Command", FromInitiator, true, true, func() PDU { return new(SCSICommand) }},
	OpTaskMgmtRequest:  {"Task Management Function Request", FromInitiator, false, false, func() PDU { return new(TaskMgmtRequest) }},
	OpLoginRequest:     {"Login Request", FromInitiator, true, false, func() PDU { return new(LoginRequest) }},
	OpTextRequest:      {"Text Request", FromInitiator, true, false, func() PDU { return new(TextRequest) }},
	OpSCSIDataOut:      {"SCSI Data-Out", FromInitiator, true, false, func() PDU { return new(DataOut) }},
	OpLogoutRequest:    {"Logout Request", FromInitiator, false, false, func() PDU { return new(LogoutRequest) }},
	OpSNACKRequest:     {"SNACK Request", FromInitiator, false, false, func() PDU { return new(SNACKRequest) }},
	OpNOPIn:            {"NOP-In", FromTarget, true, false, func() PDU { return new(NOPIn) }},
	OpSCSIResponse:     {"SCSI Response", FromTarget, true, false, func() PDU { return new(SCSIResponse) }},
	OpTaskMgmtResponse: {"Task Management Function Response", FromTarget, false, false, func() PDU { return new(TaskMgmtResponse) }},
	OpLoginResponse:    {"Login Response", FromTarget, true, false, func() PDU { return new(LoginResponse) }},
	OpTextResponse:     {"Text Response", FromTarget, true, false, func() PDU { return new(TextResponse) }},
	OpSCSIDataIn:       {"SCSI Data-In", FromTarget, true, false, func() PDU { return new(DataIn) }},
	OpLogoutResponse:   {"Logout Response", FromTarget, false, false, func() PDU { return new(LogoutResponse) }},
	OpR2T:              {"Ready To Transfer", FromTarget, false, false, func() PDU { return new(R2T) }},
	OpAsyncMessage:     {"Asynchronous Message", FromTarget, true, false, func() PDU { return new(AsyncMessage) }},
	OpReject:           {"Reject", FromTarget, true, false, func() PDU { return new(Reject) }},
}

// Valid reports whether RFC 7143 defines the opcode.
func (o Opcode) Valid() bool { return o < 64 && ops[o].name != "" }

// Direction reports which side sends the opcode; 0 for an undefined opcode.
func (o Opcode) Direction() Direction {
	if !o.Valid() {
		return 0
	}
	return ops[o].dir
}

// String returns the RFC 7143 name of the opcode.
func (o Opcode) String() string {
	if o.Valid() {
		return ops[o].name
	}
	return fmt.Sprintf("Opcode(0x%02x)", uint8(o))
}

// New returns an empty PDU of the opcode's type, or nil for an undefined opcode.
func New(o Opcode) PDU {
	if !o.Valid() {
		return nil
	}
	return ops[o].new()
}
