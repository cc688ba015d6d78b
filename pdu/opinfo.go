package pdu

// MayCarryData reports whether RFC 7143 lets a PDU of this opcode carry a
// data segment; false for an undefined opcode.
func (o Opcode) MayCarryData() bool { return o.Valid() && ops[o].data }

// MayCarryAHS reports whether a PDU of this opcode may carry additional
// header segments (only a SCSI Command does); false for an undefined opcode.
func (o Opcode) MayCarryAHS() bool { return o.Valid() && ops[o].ahs }

// UpdateCRC32C extends crc, the CRC32C of some bytes, with b: the CRC32C of
// the bytes followed by b. Digests cover a header with its AHS, and data
// with its padding.
func UpdateCRC32C(crc uint32, b []byte) uint32 { return updateCRC(crc, b) }
