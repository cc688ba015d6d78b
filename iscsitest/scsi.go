package iscsitest

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"github.com/goiscsi/iscsi/pdu"
)

// SCSI operation codes the target implements (SPC-4, SBC-3).
const (
	opTestUnitReady     = 0x00
	opRequestSense      = 0x03
	opRead6             = 0x08
	opWrite6            = 0x0a
	opInquiry           = 0x12
	opModeSense6        = 0x1a
	opStartStopUnit     = 0x1b
	opReadCapacity10    = 0x25
	opRead10            = 0x28
	opWrite10           = 0x2a
	opSynchronizeCache  = 0x35
	opModeSense10       = 0x5a
	opRead16            = 0x88
	opWrite16           = 0x8a
	opSynchronizeCache6 = 0x91
	opServiceActionIn16 = 0x9e
	opReportLUNs        = 0xa0
	opRead12            = 0xa8
	opWrite12           = 0xaa

	saReadCapacity16 = 0x10
)

// sense is a sense key with its additional sense code and qualifier.
type sense struct{ key, asc, ascq byte }

var (
	senseInvalidOpcode      = sense{0x05, 0x20, 0x00} // ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE
	senseLBAOutOfRange      = sense{0x05, 0x21, 0x00} // ILLEGAL REQUEST, LBA OUT OF RANGE
	senseInvalidFieldInCDB  = sense{0x05, 0x24, 0x00} // ILLEGAL REQUEST, INVALID FIELD IN CDB
	senseInvalidFieldInIU   = sense{0x05, 0x0e, 0x03} // ILLEGAL REQUEST, INVALID FIELD IN INFORMATION UNIT
	senseLUNNotSupported    = sense{0x05, 0x25, 0x00} // ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED
	senseSavingNotSupported = sense{0x05, 0x39, 0x00} // ILLEGAL REQUEST, SAVING PARAMETERS NOT SUPPORTED
	senseProtocolCRC        = sense{0x0b, 0x47, 0x05} // ABORTED COMMAND, PROTOCOL SERVICE CRC ERROR
	senseUAPowerOn          = sense{0x06, 0x29, 0x00} // UNIT ATTENTION, POWER ON, RESET, OR BUS DEVICE RESET OCCURRED
	senseUAReset            = sense{0x06, 0x29, 0x03} // UNIT ATTENTION, BUS DEVICE RESET FUNCTION OCCURRED
	senseUATargetReset      = sense{0x06, 0x29, 0x02} // UNIT ATTENTION, SCSI BUS RESET OCCURRED
)

// bytes returns the sense in fixed format (SPC-4 §4.5.3).
func (s sense) bytes() []byte {
	b := make([]byte, 18)
	b[0] = 0x70
	b[2] = s.key
	b[7] = 10
	b[12], b[13] = s.asc, s.ascq
	return b
}

// result is the outcome of a SCSI command: status, sense data, the data it
// returns (in data, or for a READ in view) and the length of the data it
// wanted to write, for residuals.
type result struct {
	status  uint8
	sense   []byte
	data    []byte
	view    *lunView
	wantOut int
}

// dataLen returns the length of the data the command returns.
func (r *result) dataLen() int {
	if r.view != nil {
		return r.view.size
	}
	return len(r.data)
}

// dataAt returns bytes [off, off+n) of the data the command returns.
func (r *result) dataAt(off, n int) []byte {
	if r.view != nil {
		return r.view.slice(off, n)
	}
	return r.data[off : off+n]
}

func good(data []byte) result { return result{status: pdu.StatusGood, data: data} }

func checkCondition(s sense) result {
	return result{status: pdu.StatusCheckCondition, sense: s.bytes()}
}

func failed(s sense) *result { r := checkCondition(s); return &r }

// truncate cuts data to the allocation length of the CDB.
func truncate(data []byte, alloc int) []byte { return data[:min(len(data), alloc)] }

// pending returns the unit attention to report instead of running a command
// on LUN n, and forgets it.
func (s *session) pendingUA(n int, op byte) *result {
	ua, ok := s.ua[n]
	if !ok || op == opInquiry || op == opReportLUNs || op == opRequestSense {
		return nil
	}
	delete(s.ua, n)
	return failed(ua)
}

// execute runs a command that writes nothing to the LUN.
func (s *session) execute(n int, cdb []byte, out []byte, woff *int64) result {
	lu := s.t.lun(n)
	if woff != nil {
		lu.writeAt(out, *woff)
		return good(nil)
	}
	op := cdb[0]
	if lu == nil {
		switch op {
		case opInquiry:
			return s.inquiry(nil, n, cdb)
		case opReportLUNs:
			return s.reportLUNs(cdb)
		case opRequestSense:
			return good(truncate(senseLUNNotSupported.bytes(), int(cdb[4])))
		}
		return checkCondition(senseLUNNotSupported)
	}
	if ua := s.pendingUA(n, op); ua != nil {
		return *ua
	}
	switch op {
	case opTestUnitReady, opStartStopUnit:
		return good(nil)
	case opSynchronizeCache, opSynchronizeCache6:
		return good(nil)
	case opInquiry:
		return s.inquiry(lu, n, cdb)
	case opRequestSense:
		return good(truncate(sense{}.bytes(), int(cdb[4])))
	case opReportLUNs:
		return s.reportLUNs(cdb)
	case opReadCapacity10:
		b := make([]byte, 8)
		binary.BigEndian.PutUint32(b, uint32(min(lu.blocks()-1, 0xffffffff)))
		binary.BigEndian.PutUint32(b[4:], BlockSize)
		return good(b)
	case opServiceActionIn16:
		if cdb[1]&0x1f != saReadCapacity16 {
			return checkCondition(senseInvalidFieldInCDB)
		}
		b := make([]byte, 32)
		binary.BigEndian.PutUint64(b, lu.blocks()-1)
		binary.BigEndian.PutUint32(b[8:], BlockSize)
		return good(truncate(b, int(binary.BigEndian.Uint32(cdb[10:]))))
	case opModeSense6, opModeSense10:
		return modeSense(lu, cdb)
	case opRead6, opRead10, opRead12, opRead16:
		off, length, fail := s.rwRange(lu, cdb)
		if fail != nil {
			return *fail
		}
		// The data goes out from the LUN's memory, pinned until written.
		return result{status: pdu.StatusGood, view: lu.view(off, length)}
	case opWrite6, opWrite10, opWrite12, opWrite16:
		// A write that comes without data (no W bit or EDTL 0) writes
		// nothing and reports the whole transfer as residual overflow.
		_, length, fail := s.rwRange(lu, cdb)
		if fail != nil {
			return *fail
		}
		return result{status: pdu.StatusGood, wantOut: length}
	}
	return checkCondition(senseInvalidOpcode)
}

// checkWrite validates a command that comes with data-out. For a WRITE it
// returns where the data goes and its length; any other command takes no
// data (isWrite false): what comes is received and dropped.
func (s *session) checkWrite(n int, cdb []byte) (off int64, length int, isWrite bool, fail *result) {
	switch cdb[0] {
	case opWrite6, opWrite10, opWrite12, opWrite16:
	default:
		return 0, 0, false, nil
	}
	lu := s.t.lun(n)
	if lu == nil {
		return 0, 0, true, failed(senseLUNNotSupported)
	}
	if ua := s.pendingUA(n, cdb[0]); ua != nil {
		return 0, 0, true, ua
	}
	off, length, fail = s.rwRange(lu, cdb)
	return off, length, true, fail
}

// rwRange decodes the LBA and transfer length of a READ or WRITE and checks
// them against the LUN and the largest transfer.
func (s *session) rwRange(lu *lun, cdb []byte) (off int64, length int, fail *result) {
	var lba, blocks uint64
	be := binary.BigEndian
	switch cdb[0] {
	case opRead6, opWrite6:
		lba = uint64(cdb[1]&0x1f)<<16 | uint64(cdb[2])<<8 | uint64(cdb[3])
		blocks = uint64(cdb[4])
		if blocks == 0 {
			blocks = 256
		}
	case opRead10, opWrite10:
		lba, blocks = uint64(be.Uint32(cdb[2:])), uint64(be.Uint16(cdb[7:]))
	case opRead12, opWrite12:
		lba, blocks = uint64(be.Uint32(cdb[2:])), uint64(be.Uint32(cdb[6:]))
	default:
		lba, blocks = be.Uint64(cdb[2:]), uint64(be.Uint32(cdb[10:]))
	}
	if cdb[0] != opRead6 && cdb[0] != opWrite6 && cdb[1]&0xe0 != 0 {
		// RDPROTECT/WRPROTECT: the LUN has no protection information.
		return 0, 0, failed(senseInvalidFieldInCDB)
	}
	if lba > lu.blocks() || blocks > lu.blocks()-lba {
		return 0, 0, failed(senseLBAOutOfRange)
	}
	if blocks*BlockSize > uint64(s.t.Config.MaxTransferLength) {
		return 0, 0, failed(senseInvalidFieldInCDB)
	}
	return int64(lba * BlockSize), int(blocks * BlockSize), nil
}

// inquiry answers INQUIRY: standard data, or the VPD pages 0x00, 0x80,
// 0x83, 0xb0 and 0xb1. lu is nil for a LUN that does not exist.
func (s *session) inquiry(lu *lun, n int, cdb []byte) result {
	evpd, page := cdb[1]&1 != 0, cdb[2]
	alloc := int(binary.BigEndian.Uint16(cdb[3:]))
	var periph byte // direct-access block device
	if lu == nil {
		periph = 0x7f // qualifier 011b: no logical unit here
	}
	if !evpd {
		if page != 0 {
			return checkCondition(senseInvalidFieldInCDB)
		}
		b := make([]byte, 66)
		b[0] = periph
		b[2] = 0x06 // SPC-4
		b[3] = 0x12 // HiSup, response data format 2
		b[4] = byte(len(b) - 5)
		b[7] = 0x02 // CmdQue
		copy(b[8:16], "GOISCSI ")
		copy(b[16:32], "iscsitest       ")
		copy(b[32:36], "0001")
		// Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
		for j, v := range []uint16{0x00a0, 0x0960, 0x0460, 0x04c0} {
			binary.BigEndian.PutUint16(b[58+2*j:], v)
		}
		return good(truncate(b, alloc))
	}
	if lu == nil {
		return checkCondition(senseLUNNotSupported)
	}
	var body []byte
	switch page {
	case 0x00:
		body = []byte{0x00, 0x80, 0x83, 0xb0, 0xb1}
	case 0x80:
		body = []byte(s.serial(n))
	case 0x83:
		body = s.deviceIdentification(n)
	case 0xb0:
		body = make([]byte, 0x3c)
		binary.BigEndian.PutUint32(body[4:], uint32(s.t.Config.MaxTransferLength/BlockSize)) // MAXIMUM TRANSFER LENGTH
		binary.BigEndian.PutUint32(body[8:], uint32(min(s.params.MaxBurstLength, s.t.Config.MaxTransferLength)/BlockSize))
	case 0xb1:
		body = make([]byte, 0x3c)
		body[1] = 1 // MEDIUM ROTATION RATE: non-rotating
	default:
		return checkCondition(senseInvalidFieldInCDB)
	}
	b := make([]byte, 4, 4+len(body))
	b[0], b[1] = periph, page
	binary.BigEndian.PutUint16(b[2:], uint16(len(body)))
	return good(truncate(append(b, body...), alloc))
}

// serial is the unit serial number of LUN n: stable for a target name.
func (s *session) serial(n int) string {
	h := sha256.Sum256([]byte(s.t.Config.Name))
	return fmt.Sprintf("%x%04d", h[:6], n)
}

// deviceIdentification builds VPD page 0x83: an NAA IEEE Registered Extended
// designator and a T10 vendor ID for the LUN, and the target's iSCSI name.
func (s *session) deviceIdentification(n int) []byte {
	h := sha256.Sum256(fmt.Appendf(nil, "%s/%d", s.t.Config.Name, n))
	naa := h[:16]
	naa[0] = 0x60 | naa[0]&0x0f
	var b []byte
	b = append(b, 0x01, 0x03, 0x00, 16) // binary, LU, NAA
	b = append(b, naa...)
	t10 := "GOISCSI " + s.serial(n)
	b = append(b, 0x02, 0x01, 0x00, byte(len(t10))) // ASCII, LU, T10 vendor ID
	b = append(b, t10...)
	name := []byte(s.t.Config.Name)
	name = append(name, make([]byte, 4-len(name)%4)...) // NUL terminated, padded to 4
	b = append(b, 0x53, 0xa8, 0x00, byte(len(name)))    // iSCSI, UTF-8, PIV, target device, SCSI name string
	return append(b, name...)
}

func (s *session) reportLUNs(cdb []byte) result {
	alloc := int(binary.BigEndian.Uint32(cdb[6:]))
	if alloc < 16 {
		return checkCondition(senseInvalidFieldInCDB)
	}
	b := make([]byte, 8, 8+8*len(s.t.luns))
	binary.BigEndian.PutUint32(b, uint32(8*len(s.t.luns)))
	for i := range s.t.luns {
		b = binary.BigEndian.AppendUint64(b, uint64(pdu.MakeLUN(i)))
	}
	return good(truncate(b, alloc))
}

// modeSense answers MODE SENSE(6) and (10) with the caching and control
// mode pages.
func modeSense(lu *lun, cdb []byte) result {
	ten := cdb[0] == opModeSense10
	dbd := cdb[1]&0x08 != 0
	pc, page := cdb[2]>>6, cdb[2]&0x3f
	if pc == 3 {
		return checkCondition(senseSavingNotSupported)
	}
	caching := []byte{0x08, 0x12, 18: 0, 19: 0}
	control := []byte{0x0a, 0x0a, 11: 0}
	var pages []byte
	switch page {
	case 0x08:
		pages = caching
	case 0x0a:
		pages = control
	case 0x3f:
		pages = append(caching, control...)
	default:
		return checkCondition(senseInvalidFieldInCDB)
	}
	var desc []byte
	if !dbd {
		desc = make([]byte, 8)
		binary.BigEndian.PutUint32(desc, uint32(min(lu.blocks(), 0xffffff)))
		desc[0] = 0
		binary.BigEndian.PutUint32(desc[4:], BlockSize)
	}
	var b []byte
	if ten {
		b = make([]byte, 8)
		binary.BigEndian.PutUint16(b[6:], uint16(len(desc)))
	} else {
		b = make([]byte, 4)
		b[3] = byte(len(desc))
	}
	b = append(append(b, desc...), pages...)
	devSpecific := byte(0x10) // DPOFUA: DPO and FUA are accepted (and change nothing)
	if ten {
		b[3] = devSpecific
	} else {
		b[2] = devSpecific
	}
	if ten {
		binary.BigEndian.PutUint16(b, uint16(len(b)-2))
		return good(truncate(b, int(binary.BigEndian.Uint16(cdb[7:]))))
	}
	b[0] = byte(len(b) - 1)
	return good(truncate(b, int(cdb[4])))
}
