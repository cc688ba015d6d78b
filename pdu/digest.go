package pdu

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// castagnoli is the CRC32C table; hash/crc32 uses the CPU's CRC32 instruction
// for it where there is one.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// DigestLen is the length of a header or data digest.
const DigestLen = 4

// CRC32C returns the CRC32C of b, the digest RFC 7143 §13.1 specifies.
func CRC32C(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// updateCRC extends crc, a CRC32C computed so far, with b.
func updateCRC(crc uint32, b []byte) uint32 { return crc32.Update(crc, castagnoli, b) }

// putDigest stores crc as it goes on the wire: least significant byte first
// (RFC 7143 Appendix B: 32 zero bytes give aa 36 91 8a).
func putDigest(b []byte, crc uint32) { binary.LittleEndian.PutUint32(b, crc) }

func getDigest(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }

// DigestError reports a header or data digest that does not match the bytes
// it covers.
type DigestError struct {
	Op        Opcode
	Data      bool // false: header digest, true: data digest
	Got, Want uint32
}

func (e *DigestError) Error() string {
	kind := "header"
	if e.Data {
		kind = "data"
	}
	return fmt.Sprintf("iscsi: %s: %s digest mismatch: received 0x%08x, computed 0x%08x", e.Op, kind, e.Got, e.Want)
}

// pad returns the number of padding bytes that follow n bytes of data.
func pad(n int) int { return -n & 3 }
