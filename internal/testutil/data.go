package testutil

import (
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
	cdb := binary.BigEndian.AppendUint64([]byte{op, 0}, lba)
	cdb = binary.BigEndian.AppendUint32(cdb, uint32(n/blockSize))
	return append(cdb, 0, 0) // group number, control
}

// FirstDiff returns the first offset at which a and b differ (the shorter
// one's length if one is a prefix of the other), -1 if they are equal.
func FirstDiff(a, b []byte) int {
	n := min(len(a), len(b))
	i := 0
	for i < n && a[i] == b[i] {
		i++
	}
	if i == n && len(a) == len(b) {
		return -1
	}
	return i
}
