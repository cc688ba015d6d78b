package pdu

// This file holds the PDUs a target sends (RFC 7143 §11.4–§11.19).

// SeqNums are the sequence numbers most target PDUs carry in bytes 24-35.
type SeqNums struct {
	StatSN   uint32
	ExpCmdSN uint32
	MaxCmdSN uint32
}

func (s *SeqNums) put(h *BHS) {
	put32(h[24:], s.StatSN)
	put32(h[28:], s.ExpCmdSN)
	put32(h[32:], s.MaxCmdSN)
}

// TargetSeq returns the sequence numbers of a target PDU, nil for any other,
// and whether the PDU carries status, so that StatSN advances past it (RFC
// 7143 §4.2.2.2): every target PDU does but an R2T, a NOP-In ping (ITT
// 0xffffffff) and a Data-In without the S bit.
func TargetSeq(p PDU) (sn *SeqNums, status bool) {
	switch v := p.(type) {
	case *NOPIn:
		return &v.SeqNums, v.ITT != ReservedTag
	case *SCSIResponse:
		return &v.SeqNums, true
	case *TaskMgmtResponse:
		return &v.SeqNums, true
	case *LoginResponse:
		return &v.SeqNums, true
	case *TextResponse:
		return &v.SeqNums, true
	case *DataIn:
		return &v.SeqNums, v.HasStatus
	case *LogoutResponse:
		return &v.SeqNums, true
	case *R2T:
		return &v.SeqNums, false
	case *AsyncMessage:
		return &v.SeqNums, true
	case *Reject:
		return &v.SeqNums, true
	}
	return nil, false
}

// TargetSeq is TargetSeq for a raw header, without decoding it (nothing is
// allocated): the sequence numbers of bytes 24-35, whether the PDU carries
// status (StatSN is valid and advances), and ok false for an opcode no
// target sends.
func (h *BHS) TargetSeq() (sn SeqNums, status, ok bool) {
	switch h.Opcode() {
	case OpNOPIn:
		status = h.ITT() != ReservedTag
	case OpSCSIDataIn:
		status = h[1]&0x01 != 0
	case OpR2T:
	case OpSCSIResponse, OpTaskMgmtResponse, OpLoginResponse, OpTextResponse, OpLogoutResponse, OpAsyncMessage, OpReject:
		status = true
	default:
		return SeqNums{}, false, false
	}
	return getSeq(h), status, true
}

func getSeq(h *BHS) SeqNums {
	return SeqNums{StatSN: u32(h[24:]), ExpCmdSN: u32(h[28:]), MaxCmdSN: u32(h[32:])}
}

// NOPIn is a NOP-In (§11.19): the answer to a NOP-Out, or a target's ping
// (TTT other than 0xffffffff) that the initiator must answer.
type NOPIn struct {
	LUN LUN
	ITT uint32
	TTT uint32
	SeqNums
}

// Opcode returns OpNOPIn.
func (*NOPIn) Opcode() Opcode { return OpNOPIn }

// MarshalBHS writes p into h.
func (p *NOPIn) MarshalBHS(h *BHS) {
	*h = BHS{}
	h[0] = byte(OpNOPIn)
	h[1] = 0x80
	be.PutUint64(h[8:], uint64(p.LUN))
	put32(h[16:], p.ITT)
	put32(h[20:], p.TTT)
	p.SeqNums.put(h)
}

// UnmarshalBHS reads p from h.
func (p *NOPIn) UnmarshalBHS(h *BHS) error {
	if h.Opcode() != OpNOPIn {
		return errOpcode(OpNOPIn, h)
	}
	*p = NOPIn{LUN: LUN(be.Uint64(h[8:])), ITT: u32(h[16:]), TTT: u32(h[20:]), SeqNums: getSeq(h)}
	return nil
}

// SCSI Response codes (§11.4.3).
const (
	RespCommandCompleted = 0x00
	RespTargetFailure    = 0x01
)

// SCSI status codes (SAM) that an initiator acts on.
const (
	StatusGood                = 0x00
	StatusCheckCondition      = 0x02
	StatusBusy                = 0x08
	StatusReservationConflict = 0x18
	StatusTaskSetFull         = 0x28
	StatusACAActive           = 0x30
	StatusTaskAborted         = 0x40
)

// SCSIResponse is a SCSI Response (§11.4). Sense data, if any, is in the data
// segment behind a 2-byte SenseLength.
type SCSIResponse struct {
	BidiOverflow  bool // o
	BidiUnderflow bool // u
	Overflow      bool // O
	Underflow     bool // U
	Response      uint8
	Status        uint8
	ITT           uint32
	SNACKTag      uint32
	SeqNums
	ExpDataSN             uint32
	BidiReadResidualCount uint32
	ResidualCount         uint32
}

// Opcode returns OpSCSIResponse.
func (*SCSIResponse) Opcode() Opcode { return OpSCSIResponse }

// MarshalBHS writes p into h.
func (p *SCSIResponse) MarshalBHS(h *BHS) {
	*h = BHS{}
	h[0] = byte(OpSCSIResponse)
	h[1] = 0x80 | bit(p.BidiOverflow, 0x10) | bit(p.BidiUnderflow, 0x08) | bit(p.Overflow, 0x04) | bit(p.Underflow, 0x02)
	h[2], h[3] = p.Response, p.Status
	put32(h[16:], p.ITT)
	put32(h[20:], p.SNACKTag)
	p.SeqNums.put(h)
	put32(h[36:], p.ExpDataSN)
	put32(h[40:], p.BidiReadResidualCount)
	put32(h[44:], p.ResidualCount)
}

// UnmarshalBHS reads p from h.
func (p *SCSIResponse) UnmarshalBHS(h *BHS) error {
	if h.Opcode() != OpSCSIResponse {
		return errOpcode(OpSCSIResponse, h)
	}
	*p = SCSIResponse{BidiOverflow: h[1]&0x10 != 0, BidiUnderflow: h[1]&0x08 != 0, Overflow: h[1]&0x04 != 0,
		Underflow: h[1]&0x02 != 0, Response: h[2], Status: h[3], ITT: u32(h[16:]), SNACKTag: u32(h[20:]),
		SeqNums: getSeq(h), ExpDataSN: u32(h[36:]), BidiReadResidualCount: u32(h[40:]), ResidualCount: u32(h[44:])}
	if p.Overflow && p.Underflow {
		return &ProtocolError{Op: OpSCSIResponse, Field: "Flags", Value: uint64(h[1]), Reason: "both O and U bits set"}
	}
	// §11.4.1: o and u are as mutually exclusive as O and U.
	if p.BidiOverflow && p.BidiUnderflow {
		return &ProtocolError{Op: OpSCSIResponse, Field: "Flags", Value: uint64(h[1]), Reason: "both o and u bits set"}
	}
	return nil
}

// TMResponse is a Task Management Function Response code (§11.6.1).
type TMResponse uint8

// Task management responses (§11.6.1).
const (
	TMFComplete            TMResponse = 0
	TMFNoSuchTask          TMResponse = 1
	TMFNoSuchLUN           TMResponse = 2
	TMFTaskStillAllegiant  TMResponse = 3
	TMFReassignUnsupported TMResponse = 4
	TMFNotSupported        TMResponse = 5
	TMFAuthorizationFailed TMResponse = 6
	TMFRejected            TMResponse = 255
)

// TaskMgmtResponse is a Task Management Function Response (§11.6).
type TaskMgmtResponse struct {
	Response TMResponse
	ITT      uint32
	SeqNums
}

// Opcode returns OpTaskMgmtResponse.
func (*TaskMgmtResponse) Opcode() Opcode { return OpTaskMgmtResponse }

// MarshalBHS writes p into h.
func (p *TaskMgmtResponse) MarshalBHS(h *BHS) {
	*h = BHS{}
	h[0] = byte(OpTaskMgmtResponse)
	h[1] = 0x80
	h[2] = byte(p.Response)
	put32(h[16:], p.ITT)
	p.SeqNums.put(h)
}

// UnmarshalBHS reads p from h.
func (p *TaskMgmtResponse) UnmarshalBHS(h *BHS) error {
	if h.Opcode() != OpTaskMgmtResponse {
		return errOpcode(OpTaskMgmtResponse, h)
	}
	*p = TaskMgmtResponse{Response: TMResponse(h[2]), ITT: u32(h[16:]), SeqNums: getSeq(h)}
	return nil
}

// LoginResponse is a Login Response (§11.13).
type LoginResponse struct {
	Transit       bool
	Continue      bool
	CSG, NSG      uint8
	VersionMax    uint8
	VersionActive uint8
	ISID          [6]byte
	TSIH          uint16
	ITT           uint32
	SeqNums
	StatusClass  uint8
	StatusDetail uint8
}

// Opcode returns OpLoginResponse.
func (*LoginResponse) Opcode() Opcode { return OpLoginResponse }

// MarshalBHS writes p into h.
func (p *LoginResponse) MarshalBHS(h *BHS) {
	*h = BHS{}
	h[0] = byte(OpLoginResponse)
	h[1] = stageByte(p.Transit, p.Continue, p.CSG, p.NSG)
	h[2], h[3] = p.VersionMax, p.VersionActive
	copy(h[8:14], p.ISID[:])
	put16(h[14:], p.TSIH)
	put32(h[16:], p.ITT)
	p.SeqNums.put(h)
	h[36], h[37] = p.StatusClass, p.StatusDetail
}

// UnmarshalBHS reads p from h.
func (p *LoginResponse) UnmarshalBHS(h *BHS) error {
	if h.Opcode() != OpLoginResponse {
		return errOpcode(OpLoginResponse, h)
	}
	*p = LoginResponse{Transit: h[1]&0x80 != 0, Continue: h[1]&0x40 != 0, CSG: h[1] >> 2 & 3, NSG: h[1] & 3,
		VersionMax: h[2], VersionActive: h[3], TSIH: u16(h[14:]), ITT: u32(h[16:]), SeqNums: getSeq(h),
		StatusClass: h[36], StatusDetail: h[37]}
	copy(p.ISID[:], h[8:14])
	if p.Transit && p.Continue {
		return &ProtocolError{Op: OpLoginResponse, Field: "Flags", Value: uint64(h[1]), Reason: "T and C bits both set"}
	}
	return nil
}

// Status returns the login status as one value.
func (p *LoginResponse) Status() LoginStatus {
	return LoginStatus(uint16(p.StatusClass)<<8 | uint16(p.StatusDetail))
}

// TextResponse is a Text Response (§11.11).
type TextResponse struct {
	Final    bool
	Continue bool
	LUN      LUN
	ITT      uint32
	TTT      uint32
	SeqNums
}

// Opcode returns OpTextResponse.
func (*TextResponse) Opcode() Opcode { return OpTextResponse }

// MarshalBHS writes p into h.
func (p *TextResponse) MarshalBHS(h *BHS) {
	*h = BHS{}
	h[0] = byte(OpTextResponse)
	h[1] = bit(p.Final, 0x80) | bit(p.Continue, 0x40)
	be.PutUint64(h[8:], uint64(p.LUN))
	put32(h[16:], p.ITT)
	put32(h[20:], p.TTT)
	p.SeqNums.put(h)
}

// UnmarshalBHS reads p from h.
func (p *TextResponse) UnmarshalBHS(h *BHS) error {
	if h.Opcode() != OpTextResponse {
		return errOpcode(OpTextResponse, h)
	}
	*p = TextResponse{Final: h[1]&0x80 != 0, Continue: h[1]&0x40 != 0, LUN: LUN(be.Uint64(h[8:])),
		ITT: u32(h[16:]), TTT: u32(h[20:]), SeqNums: getSeq(h)}
	if p.Final && p.Continue {
		return &ProtocolError{Op: OpTextResponse, Field: "Flags", Value: uint64(h[1]), Reason: "F and C bits both set"}
	}
	return nil
}

// DataIn is a SCSI Data-In (§11.7). With HasStatus it also completes the
// command, and Status and ResidualCount are valid.
type DataIn struct {
	Final       bool
	Acknowledge bool
	Overflow    bool
	Underflow   bool
	HasStatus   bool
	Status      uint8
	LUN         LUN
	ITT         uint32
	TTT         uint32
	SeqNums
	DataSN        uint32
	BufferOffset  uint32
	ResidualCount uint32
}

// Opcode returns OpSCSIDataIn.
func (*DataIn) Opcode() Opcode { return OpSCSIDataIn }

// MarshalBHS writes p into h.
func (p *DataIn) MarshalBHS(h *BHS) {
	*h = BHS{}
	h[0] = byte(OpSCSIDataIn)
	h[1] = bit(p.Final, 0x80) | bit(p.Acknowledge, 0x40) | bit(p.Overflow, 0x04) | bit(p.Underflow, 0x02) | bit(p.HasStatus, 0x01)
	h[3] = p.Status
	be.PutUint64(h[8:], uint64(p.LUN))
	put32(h[16:], p.ITT)
	put32(h[20:], p.TTT)
	p.SeqNums.put(h)
	put32(h[36:], p.DataSN)
	put32(h[40:], p.BufferOffset)
	put32(h[44:], p.ResidualCount)
}

// UnmarshalBHS reads p from h.
func (p *DataIn) UnmarshalBHS(h *BHS) error {
	if h.Opcode() != OpSCSIDataIn {
		return errOpcode(OpSCSIDataIn, h)
	}
	// Data-In is the PDU a read receives most of, so every field is set in
	// place: a composite literal builds the value on the stack and copies
	// it. Setting all of them still resets p.
	f := h[1]
	p.Final, p.Acknowledge = f&0x80 != 0, f&0x40 != 0
	p.Overflow, p.Underflow, p.HasStatus = f&0x04 != 0, f&0x02 != 0, f&0x01 != 0
	p.Status = h[3]
	p.LUN = LUN(be.Uint64(h[8:]))
	p.ITT, p.TTT = u32(h[16:]), u32(h[20:])
	p.StatSN, p.ExpCmdSN, p.MaxCmdSN = u32(h[24:]), u32(h[28:]), u32(h[32:])
	p.DataSN, p.BufferOffset, p.ResidualCount = u32(h[36:]), u32(h[40:]), u32(h[44:])
	if p.HasStatus && !p.Final {
		return &ProtocolError{Op: OpSCSIDataIn, Field: "Flags", Value: uint64(h[1]), Reason: "S bit set without F bit"}
	}
	if p.Overflow && p.Underflow {
		return &ProtocolError{Op: OpSCSIDataIn, Field: "Flags", Value: uint64(h[1]), Reason: "both O and U bits set"}
	}
	return nil
}

// LogoutResponseCode is a Logout Response's response code (§11.15.1).
type LogoutResponseCode uint8

// Logout response codes (§11.15.1).
const (
	LogoutSuccess             LogoutResponseCode = 0
	LogoutCIDNotFound         LogoutResponseCode = 1
	LogoutRecoveryUnsupported LogoutResponseCode = 2
	LogoutCleanupFailed       LogoutResponseCode = 3
)

// LogoutResponse is a Logout Response (§11.15).
type LogoutResponse struct {
	Response LogoutResponseCode
	ITT      uint32
	SeqNums
	Time2Wait   uint16
	Time2Retain uint16
}

// Opcode returns OpLogoutResponse.
func (*LogoutResponse) Opcode() Opcode { return OpLogoutResponse }

// MarshalBHS writes p into h.
func (p *LogoutResponse) MarshalBHS(h *BHS) {
	*h = BHS{}
	h[0] = byte(OpLogoutResponse)
	h[1] = 0x80
	h[2] = byte(p.Response)
	put32(h[16:], p.ITT)
	p.SeqNums.put(h)
	put16(h[40:], p.Time2Wait)
	put16(h[42:], p.Time2Retain)
}

// UnmarshalBHS reads p from h.
func (p *LogoutResponse) UnmarshalBHS(h *BHS) error {
	if h.Opcode() != OpLogoutResponse {
		return errOpcode(OpLogoutResponse, h)
	}
	*p = LogoutResponse{Response: LogoutResponseCode(h[2]), ITT: u32(h[16:]), SeqNums: getSeq(h), Time2Wait: u16(h[40:]), Time2Retain: u16(h[42:])}
	return nil
}

// R2T is a Ready To Transfer (§11.8): the target asks for DesiredDataTransferLength
// bytes of a write's data from BufferOffset.
type R2T struct {
	LUN LUN
	ITT uint32
	TTT uint32
	SeqNums
	R2TSN                     uint32
	BufferOffset              uint32
	DesiredDataTransferLength uint32
}

// Opcode returns OpR2T.
func (*R2T) Opcode() Opcode { return OpR2T }

// MarshalBHS writes p into h.
func (p *R2T) MarshalBHS(h *BHS) {
	*h = BHS{}
	h[0] = byte(OpR2T)
	h[1] = 0x80
	be.PutUint64(h[8:], uint64(p.LUN))
	put32(h[16:], p.ITT)
	put32(h[20:], p.TTT)
	p.SeqNums.put(h)
	put32(h[36:], p.R2TSN)
	put32(h[40:], p.BufferOffset)
	put32(h[44:], p.DesiredDataTransferLength)
}

// UnmarshalBHS reads p from h.
func (p *R2T) UnmarshalBHS(h *BHS) error {
	if h.Opcode() != OpR2T {
		return errOpcode(OpR2T, h)
	}
	*p = R2T{LUN: LUN(be.Uint64(h[8:])), ITT: u32(h[16:]), TTT: u32(h[20:]), SeqNums: getSeq(h),
		R2TSN: u32(h[36:]), BufferOffset: u32(h[40:]), DesiredDataTransferLength: u32(h[44:])}
	if p.TTT == ReservedTag {
		return &ProtocolError{Op: OpR2T, Field: "TargetTransferTag", Value: uint64(p.TTT), Reason: "reserved value"}
	}
	return nil
}

// AsyncEvent is an Asynchronous Message's AsyncEvent code (§11.9.1).
type AsyncEvent uint8

// Asynchronous events (§11.9.1).
const (
	AsyncSCSIEvent          AsyncEvent = 0
	AsyncLogoutRequest      AsyncEvent = 1
	AsyncConnectionDrop     AsyncEvent = 2
	AsyncSessionDrop        AsyncEvent = 3
	AsyncNegotiationRequest AsyncEvent = 4
	AsyncTaskTermination    AsyncEvent = 5
	AsyncVendorSpecific     AsyncEvent = 255
)

// AsyncMessage is an Asynchronous Message (§11.9). Its data segment holds
// sense data and, optionally, iSCSI event data.
type AsyncMessage struct {
	LUN LUN
	ITT uint32 // always 0xffffffff
	SeqNums
	AsyncEvent AsyncEvent
	AsyncVCode uint8
	Parameter1 uint16
	Parameter2 uint16
	Parameter3 uint16
}

// Opcode returns OpAsyncMessage.
func (*AsyncMessage) Opcode() Opcode { return OpAsyncMessage }

// MarshalBHS writes p into h.
func (p *AsyncMessage) MarshalBHS(h *BHS) {
	*h = BHS{}
	h[0] = byte(OpAsyncMessage)
	h[1] = 0x80
	be.PutUint64(h[8:], uint64(p.LUN))
	put32(h[16:], p.ITT)
	p.SeqNums.put(h)
	h[36], h[37] = byte(p.AsyncEvent), p.AsyncVCode
	put16(h[38:], p.Parameter1)
	put16(h[40:], p.Parameter2)
	put16(h[42:], p.Parameter3)
}

// UnmarshalBHS reads p from h.
func (p *AsyncMessage) UnmarshalBHS(h *BHS) error {
	if h.Opcode() != OpAsyncMessage {
		return errOpcode(OpAsyncMessage, h)
	}
	*p = AsyncMessage{LUN: LUN(be.Uint64(h[8:])), ITT: u32(h[16:]), SeqNums: getSeq(h), AsyncEvent: AsyncEvent(h[36]),
		AsyncVCode: h[37], Parameter1: u16(h[38:]), Parameter2: u16(h[40:]), Parameter3: u16(h[42:])}
	return nil
}

// RejectReason is a Reject's reason code (§11.17.1).
type RejectReason uint8

// Reject reasons (§11.17.1).
const (
	RejectDataDigestError     RejectReason = 0x02
	RejectSNACKReject         RejectReason = 0x03
	RejectProtocolError       RejectReason = 0x04
	RejectCommandNotSupported RejectReason = 0x05
	RejectImmediateCommand    RejectReason = 0x06
	RejectTaskInProgress      RejectReason = 0x07
	RejectInvalidDataACK      RejectReason = 0x08
	RejectInvalidPDUField     RejectReason = 0x09
	RejectLongOpReject        RejectReason = 0x0a
	RejectDeprecated          RejectReason = 0x0b
	RejectWaitingForLogout    RejectReason = 0x0c
)

// Reject is a Reject (§11.17). Its data segment holds the header of the
// rejected PDU.
type Reject struct {
	Reason RejectReason
	ITT    uint32 // always 0xffffffff
	SeqNums
	DataSN uint32 // DataSN or R2TSN
}

// Opcode returns OpReject.
func (*Reject) Opcode() Opcode { return OpReject }

// MarshalBHS writes p into h.
func (p *Reject) MarshalBHS(h *BHS) {
	*h = BHS{}
	h[0] = byte(OpReject)
	h[1] = 0x80
	h[2] = byte(p.Reason)
	put32(h[16:], p.ITT)
	p.SeqNums.put(h)
	put32(h[36:], p.DataSN)
}

// UnmarshalBHS reads p from h.
func (p *Reject) UnmarshalBHS(h *BHS) error {
	if h.Opcode() != OpReject {
		return errOpcode(OpReject, h)
	}
	*p = Reject{Reason: RejectReason(h[2]), ITT: u32(h[16:]), SeqNums: getSeq(h), DataSN: u32(h[36:])}
	return nil
}
