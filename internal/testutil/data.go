package testutil

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
)

// Pattern returns n bytes that change with the offset, the 512-byte block
// and seed: data a test writes and expects back.
func Pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7) + byte(i>>9)
	}
	return b
}

// Random returns n pseudo-random bytes that depend on seed only, so that
// data left on a real target by another case never passes for this one's,
// and that look like no PDU header.
func Random(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24),
		byte(seed >> 32), byte(seed >> 40), byte(seed >> 48), byte(seed >> 56), 'g', 'o', 'i', 's', 'c', 's', 'i'})
	r.Read(b)
	return b
}

// RW16 returns a READ(16) (op 0x88) or WRITE(16) (op 0x8a) CDB for n bytes
// at lba, in blocks of blockSize.
func RW16(op byte, lba uint64, n, blockSize int) []byte {
	cdb := make([]byte, 16)
	cdb[0] = op
	binary.BigEndian.PutUint64(cdb[2:], lba)
	binary.BigEndian.PutUint32(cdb[10:], uint32(n/blockSize))
	return cdb
}

// FirstDiff returns the first offset at which a and b differ, -1 if they
// are equal.
func FirstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
