package pdu

// This file holds the PDUs an initiator sends (RFC 7143 §11.2–§11.16), each
// laid out like the RFC's field table.

// NOPOut is a NOP-Out (§11.18): a ping, or the answer to a target's NOP-In.
type NOPOut struct {
	Immediate bool
	LUN       LUN
	ITT       uint32 // 0xffffffff when answering a NOP-In
	TTT       uint32 // the NOP-In's TTT when answering, else 0xffffffff
	CmdSN     uint32
	ExpStatSN uint32
}

// Opcode returns OpNOPOut.
func (*NOPOut) Opcode() Opcode { return OpNOPOut }

// MarshalBHS writes p into h.
func (p *NOPOut) MarshalBHS(h *BHS) {
	*h = BHS{}
	h[0] = byte(OpNOPOut) | imm(p.Immediate)
	h[1] = 0x80
	be.PutUint64(h[8:], uint64(p.LUN))
	put32(h[16:], p.ITT)
	put32(h[20:], p.TTT)
	put32(h[24:], p.CmdSN)
	put32(h[28:], p.ExpStatSN)
}

// UnmarshalBHS reads p from h.
func (p *NOPOut) UnmarshalBHS(h *BHS) error {
	if h.Opcode() != OpNOPOut {
		return errOpcode(OpNOPOut, h)
	}
	*p = NOPOut{Immediate: h.Immediate(), LUN: LUN(be.Uint64(h[8:])), ITT: u32(h[16:]), TTT: u32(h[20:]),
		CmdSN: u32(h[24:]), ExpStatSN: u32(h[28:])}
	return nil
}

// Task attributes of a SCSI Command (§11.3.1, ATTR).
const (
	AttrUntagged    = 0
	AttrSimple      = 1
	AttrOrdered     = 2
	AttrHeadOfQueue = 3
	AttrACA         = 4
)

// SCSICommand is a SCSI Command (§11.3). CDBs longer than 16 bytes continue in
// an Extended CDB AHS.
type SCSICommand struct {
	Immediate                  bool
	Final                      bool
	Read                       bool
	Write                      bool
	Attr                       uint8
	LUN                        LUN
	ITT                        uint32
	ExpectedDataTransferLength uint32
	CmdSN                      uint32
	ExpStatSN                  uint32
	CDB                        [16]byte
}

// Opcode returns OpSCSICommand.
func (*SCSICommand) Opcode() Opcode { return OpSCSICommand }

// MarshalBHS writes p into h.
func (p *SCSICommand) MarshalBHS(h *BHS) {
	*h = BHS{}
	h[0] = byte(OpSCSICommand) | imm(p.Immediate)
	h[1] = bit(p.Final, 0x80) | bit(p.Read, 0x40) | bit(p.Write, 0x20) | p.Attr&0x07
	be.PutUint64(h[8:], uint64(p.LUN))
	put32(h[16:], p.ITT)
	put32(h[20:], p.ExpectedDataTransferLength)
	put32(h[24:], p.CmdSN)
	put32(h[28:], p.ExpStatSN)
	copy(h[32:], p.CDB[:])
}

// UnmarshalBHS reads p from h.
func (p *SCSICommand) UnmarshalBHS(h *BHS) error {
	if h.Opcode() != OpSCSICommand {
		return errOpcode(OpSCSICommand, h)
	}
	*p = SCSICommand{Immediate: h.Immediate(), Final: h[1]&0x80 != 0, Read: h[1]&0x40 != 0,
		Write: h[1]&0x20 != 0, Attr: h[1] & 0x07, LUN: LUN(be.Uint64(h[8:])), ITT: u32(h[16:]),
		ExpectedDataTransferLength: u32(h[20:]), CmdSN: u32(h[24:]), ExpStatSN: u32(h[28:])}
	copy(p.CDB[:], h[32:48])
	return nil
}

// TMFunction is a Task Management function code (§11.5.1).
type TMFunction uint8

// Task management functions (§11.5.1).
const (
	TMFAbortTask        TMFunction = 1
	TMFAbortTaskSet     TMFunction = 2
	TMFClearACA         TMFunction = 3
	TMFClearTaskSet     TMFunction = 4
	TMFLogicalUnitReset TMFunction = 5
	TMFTargetWarmReset  TMFunction = 6
	TMFTargetColdReset  TMFunction = 7
	TMFTaskReassign     TMFunction = 8
)

// TaskMgmtRequest is a Task Management Function Request (§11.5).
type TaskMgmtRequest struct {
	Immediate  bool
	Function   TMFunction
	LUN        LUN
	ITT        uint32
	RefTaskTag uint32
	CmdSN      uint32
	ExpStatSN  uint32
	RefCmdSN   uint32
	ExpDataSN  uint32
}

// Opcode returns OpTaskMgmtRequest.
func (*TaskMgmtRequest) Opcode() Opcode { return OpTaskMgmtRequest }

// MarshalBHS writes p into h.
func (p *TaskMgmtRequest) MarshalBHS(h *BHS) {
	*h = BHS{}
	h[0] = byte(OpTaskMgmtRequest) | imm(p.Immediate)
	h[1] = 0x80 | byte(p.Function)&0x7f
	be.PutUint64(h[8:], uint64(p.LUN))
	put32(h[16:], p.ITT)
	put32(h[20:], p.RefTaskTag)
	put32(h[24:], p.CmdSN)
	put32(h[28:], p.ExpStatSN)
	put32(h[32:], p.RefCmdSN)
	put32(h[36:], p.ExpDataSN)
}

// UnmarshalBHS reads p from h.
func (p *TaskMgmtRequest) UnmarshalBHS(h *BHS) error {
	if h.Opcode() != OpTaskMgmtRequest {
		return errOpcode(OpTaskMgmtRequest, h)
	}
	*p = TaskMgmtRequest{Immediate: h.Immediate(), Function: TMFunction(h[1] & 0x7f), LUN: LUN(be.Uint64(h[8:])),
		ITT: u32(h[16:]), RefTaskTag: u32(h[20:]), CmdSN: u32(h[24:]), ExpStatSN: u32(h[28:]),
		RefCmdSN: u32(h[32:]), ExpDataSN: u32(h[36:])}
	return nil
}

// Login stages (§11.12, CSG and NSG).
const (
	StageSecurity    = 0
	StageOperational = 1
	StageFullFeature = 3
)

// LoginRequest is a Login Request (§11.12). It is always immediate.
type LoginRequest struct {
	Transit    bool
	Continue   bool
	CSG, NSG   uint8
	VersionMax uint8
	VersionMin uint8
	ISID       [6]byte
	TSIH       uint16
	ITT        uint32
	CID        uint16
	CmdSN      uint32
	ExpStatSN  uint32
}

// Opcode returns OpLoginRequest.
func (*LoginRequest) Opcode() Opcode { return OpLoginRequest }

// MarshalBHS writes p into h.
func (p *LoginRequest) MarshalBHS(h *BHS) {
	*h = BHS{}
	h[0] = byte(OpLoginRequest) | 0x40
	h[1] = stageByte(p.Transit, p.Continue, p.CSG, p.NSG)
	h[2], h[3] = p.VersionMax, p.VersionMin
	copy(h[8:14], p.ISID[:])
	put16(h[14:], p.TSIH)
	put32(h[16:], p.ITT)
	put16(h[20:], p.CID)
	put32(h[24:], p.CmdSN)
	put32(h[28:], p.ExpStatSN)
}

// UnmarshalBHS reads p from h.
func (p *LoginRequest) UnmarshalBHS(h *BHS) error {
	if h.Opcode() != OpLoginRequest {
		return errOpcode(OpLoginRequest, h)
	}
	*p = LoginRequest{Transit: h[1]&0x80 != 0, Continue: h[1]&0x40 != 0, CSG: h[1] >> 2 & 3, NSG: h[1] & 3,
		VersionMax: h[2], VersionMin: h[3], TSIH: u16(h[14:]), ITT: u32(h[16:]), CID: u16(h[20:]),
		CmdSN: u32(h[24:]), ExpStatSN: u32(h[28:])}
	copy(p.ISID[:], h[8:14])
	if p.Transit && p.Continue {
		return &ProtocolError{Op: OpLoginRequest, Field: "Flags", Value: uint64(h[1]), Reason: "T and C bits both set"}
	}
	return nil
}

// TextRequest is a Text Request (§11.10).
type TextRequest struct {
	Immediate bool
	Final     bool
	Continue  bool
	LUN       LUN
	ITT       uint32
	TTT       uint32
	CmdSN     uint32
	ExpStatSN uint32
}

// Opcode returns OpTextRequest.
func (*TextRequest) Opcode() Opcode { return OpTextRequest }

// MarshalBHS writes p into h.
func (p *TextRequest) MarshalBHS(h *BHS) {
	*h = BHS{}
	h[0] = byte(OpTextRequest) | imm(p.Immediate)
	h[1] = bit(p.Final, 0x80) | bit(p.Continue, 0x40)
	be.PutUint64(h[8:], uint64(p.LUN))
	put32(h[16:], p.ITT)
	put32(h[20:], p.TTT)
	put32(h[24:], p.CmdSN)
	put32(h[28:], p.ExpStatSN)
}

// UnmarshalBHS reads p from h.
func (p *TextRequest) UnmarshalBHS(h *BHS) error {
	if h.Opcode() != OpTextRequest {
		return errOpcode(OpTextRequest, h)
	}
	*p = TextRequest{Immediate: h.Immediate(), Final: h[1]&0x80 != 0, Continue: h[1]&0x40 != 0,
		LUN: LUN(be.Uint64(h[8:])), ITT: u32(h[16:]), TTT: u32(h[20:]), CmdSN: u32(h[24:]), ExpStatSN: u32(h[28:])}
	if p.Final && p.Continue {
		return &ProtocolError{Op: OpTextRequest, Field: "Flags", Value: uint64(h[1]), Reason: "F and C bits both set"}
	}
	return nil
}

// DataOut is a SCSI Data-Out (§11.7).
type DataOut struct {
	Final        bool
	LUN          LUN
	ITT          uint32
	TTT          uint32
	ExpStatSN    uint32
	DataSN       uint32
	BufferOffset uint32
}

// Opcode returns OpSCSIDataOut.
func (*DataOut) Opcode() Opcode { return OpSCSIDataOut }

// MarshalBHS writes p into h.
func (p *DataOut) MarshalBHS(h *BHS) {
	*h = BHS{}
	h[0] = byte(OpSCSIDataOut)
	h[1] = bit(p.Final, 0x80)
	be.PutUint64(h[8:], uint64(p.LUN))
	put32(h[16:], p.ITT)
	put32(h[20:], p.TTT)
	put32(h[28:], p.ExpStatSN)
	put32(h[36:], p.DataSN)
	put32(h[40:], p.BufferOffset)
}

// UnmarshalBHS reads p from h.
func (p *DataOut) UnmarshalBHS(h *BHS) error {
	if h.Opcode() != OpSCSIDataOut {
		return errOpcode(OpSCSIDataOut, h)
	}
	*p = DataOut{Final: h[1]&0x80 != 0, LUN: LUN(be.Uint64(h[8:])), ITT: u32(h[16:]), TTT: u32(h[20:]),
		ExpStatSN: u32(h[28:]), DataSN: u32(h[36:]), BufferOffset: u32(h[40:])}
	return nil
}

// LogoutReason is a Logout Request's reason code (§11.14.1).
type LogoutReason uint8

// Logout reason codes (§11.14.1).
const (
	LogoutCloseSession      LogoutReason = 0
	LogoutCloseConnection   LogoutReason = 1
	LogoutRemoveForRecovery LogoutReason = 2
)

// LogoutRequest is a Logout Request (§11.14).
type LogoutRequest struct {
	Immediate  bool
	ReasonCode LogoutReason
	ITT        uint32
	CID        uint16 // the connection to close; not meaningful for reason 0
	CmdSN      uint32
	ExpStatSN  uint32
}

// Opcode returns OpLogoutRequest.
func (*LogoutRequest) Opcode() Opcode { return OpLogoutRequest }

// MarshalBHS writes p into h.
func (p *LogoutRequest) MarshalBHS(h *BHS) {
	*h = BHS{}
	h[0] = byte(OpLogoutRequest) | imm(p.Immediate)
	h[1] = 0x80 | byte(p.ReasonCode)&0x7f
	put32(h[16:], p.ITT)
	put16(h[20:], p.CID)
	put32(h[24:], p.CmdSN)
	put32(h[28:], p.ExpStatSN)
}

// UnmarshalBHS reads p from h.
func (p *LogoutRequest) UnmarshalBHS(h *BHS) error {
	if h.Opcode() != OpLogoutRequest {
		return errOpcode(OpLogoutRequest, h)
	}
	*p = LogoutRequest{Immediate: h.Immediate(), ReasonCode: LogoutReason(h[1] & 0x7f), ITT: u32(h[16:]), CID: u16(h[20:]),
		CmdSN: u32(h[24:]), ExpStatSN: u32(h[28:])}
	return nil
}

// SNACK types (§11.16.1).
const (
	SNACKData       = 0
	SNACKStatus     = 1
	SNACKDataACK    = 2
	SNACKRDataSNACK = 3
)

// SNACKRequest is a SNACK Request (§11.16).
type SNACKRequest struct {
	Type      uint8
	LUN       LUN
	ITT       uint32
	TTT       uint32 // Target Transfer Tag or SNACK Tag
	ExpStatSN uint32
	BegRun    uint32
	RunLength uint32
}

// Opcode returns OpSNACKRequest.
func (*SNACKRequest) Opcode() Opcode { return OpSNACKRequest }

// MarshalBHS writes p into h.
func (p *SNACKRequest) MarshalBHS(h *BHS) {
	*h = BHS{}
	h[0] = byte(OpSNACKRequest)
	h[1] = 0x80 | p.Type&0x0f
	be.PutUint64(h[8:], uint64(p.LUN))
	put32(h[16:], p.ITT)
	put32(h[20:], p.TTT)
	put32(h[28:], p.ExpStatSN)
	put32(h[40:], p.BegRun)
	put32(h[44:], p.RunLength)
}

// UnmarshalBHS reads p from h.
func (p *SNACKRequest) UnmarshalBHS(h *BHS) error {
	if h.Opcode() != OpSNACKRequest {
		return errOpcode(OpSNACKRequest, h)
	}
	*p = SNACKRequest{Type: h[1] & 0x0f, LUN: LUN(be.Uint64(h[8:])), ITT: u32(h[16:]), TTT: u32(h[20:]),
		ExpStatSN: u32(h[28:]), BegRun: u32(h[40:]), RunLength: u32(h[44:])}
	return nil
}

func imm(b bool) byte { return bit(b, 0x40) }

func bit(b bool, v byte) byte {
	if b {
		return v
	}
	return 0
}

func stageByte(transit, cont bool, csg, nsg uint8) byte {
	return bit(transit, 0x80) | bit(cont, 0x40) | (csg&3)<<2 | nsg&3
}
