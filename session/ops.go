package session

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"strings"
	"sync"
)

// unitAttentionRetries is how often the helpers below retry a command that
// met UNIT ATTENTION: a new session's first command may meet one per event
// the target has to report (power on, LUNs changed, ...).
const unitAttentionRetries = 4

// executeRetryUA runs cmd, retrying it while it meets UNIT ATTENTION. A
// command that meets one was not performed (SAM-5 §5.14), so a write too
// may be sent again.
func (s *Session) executeRetryUA(ctx context.Context, cmd *Command) (*Result, error) {
	// Inlined, so that a caller keeping the Result has it on its stack.
	return s.executeRetryUATo(ctx, cmd, new(Result))
}

// executeRetryUATo is executeRetryUA with res for the Result.
func (s *Session) executeRetryUATo(ctx context.Context, cmd *Command, res *Result) (*Result, error) {
	for i := 0; ; i++ {
		res, err := s.executeTo(ctx, cmd, res)
		if err != nil && IsUnitAttention(err) && i < unitAttentionRetries {
			continue
		}
		return res, err
	}
}

// InquiryData is the standard INQUIRY data of a logical unit.
type InquiryData struct {
	PeripheralType int
	Vendor         string
	Product        string
	Revision       string
}

// Inquiry returns the standard INQUIRY data of lun.
func (s *Session) Inquiry(ctx context.Context, lun int) (*InquiryData, error) {
	buf := make([]byte, 96)
	cdb := []byte{0x12, 0, 0, 0, byte(len(buf)), 0}
	res, err := s.executeRetryUA(ctx, &Command{LUN: lun, CDB: cdb, Read: buf})
	if err != nil {
		return nil, err
	}
	if res.N < 36 {
		return nil, fmt.Errorf("iscsi: INQUIRY returned %d bytes, want at least 36", res.N)
	}
	return &InquiryData{
		PeripheralType: int(buf[0] & 0x1f),
		Vendor:         strings.TrimSpace(string(buf[8:16])),
		Product:        strings.TrimSpace(string(buf[16:32])),
		Revision:       strings.TrimSpace(string(buf[32:36])),
	}, nil
}

// Capacity is what READ CAPACITY(16) reports.
type Capacity struct {
	Blocks    uint64 // number of logical blocks
	BlockSize uint32 // bytes per block
}

// Bytes returns the capacity in bytes. For a Capacity that ReadCapacity
// returned it does not overflow.
func (c Capacity) Bytes() uint64 { return c.Blocks * uint64(c.BlockSize) }

// MaxBlockSize is the largest logical block length ReadCapacity accepts,
// 16 MiB. SBC leaves the length open, but real logical units use 512 to a
// few KiB (512, 520, 4096, 4160); a length near 4 GiB is a broken or
// hostile target, and one block must fit in a command's buffer.
const MaxBlockSize = 16 << 20

// readCapacity16Len is the length of READ CAPACITY(16) parameter data
// (SBC-4 §5.20.2); ReadCapacity asks for all of it.
const readCapacity16Len = 32

// readCapacityUsed is how much of the parameter data ReadCapacity uses:
// RETURNED LOGICAL BLOCK ADDRESS (8 bytes) and LOGICAL BLOCK LENGTH (4).
// A target that returns at least that much is accepted; the rest (protection
// and provisioning fields) is not read.
const readCapacityUsed = 12

// ErrBadCapacity is wrapped by the error of a READ CAPACITY answer that
// cannot describe a logical unit: too short, a block length of 0 or over
// MaxBlockSize, a last LBA of 2^64-1 (the block count would wrap to 0), or a
// size in bytes over 2^64-1. The error's text names the field and its value.
var ErrBadCapacity = errors.New("iscsi: target returned invalid READ CAPACITY data")

// ReadCapacity returns lun's size with READ CAPACITY(16). It checks what
// the target returned (see ErrBadCapacity), so a caller may divide by the
// block size and compute the size in bytes without overflow.
func (s *Session) ReadCapacity(ctx context.Context, lun int) (Capacity, error) {
	buf := make([]byte, readCapacity16Len)
	cdb := make([]byte, 16)
	cdb[0], cdb[1] = 0x9e, 0x10
	binary.BigEndian.PutUint32(cdb[10:], uint32(len(buf)))
	res, err := s.executeRetryUA(ctx, &Command{LUN: lun, CDB: cdb, Read: buf})
	if err != nil {
		return Capacity{}, err
	}
	return parseCapacity16(buf[:res.N])
}

// parseCapacity16 decodes and checks READ CAPACITY(16) parameter data.
func parseCapacity16(b []byte) (Capacity, error) {
	if len(b) < readCapacityUsed {
		return Capacity{}, fmt.Errorf("%w: %d bytes of parameter data, want at least %d (of %d)",
			ErrBadCapacity, len(b), readCapacityUsed, readCapacity16Len)
	}
	last := binary.BigEndian.Uint64(b)
	bs := binary.BigEndian.Uint32(b[8:])
	switch {
	case bs == 0 || bs > MaxBlockSize:
		return Capacity{}, fmt.Errorf("%w: block size %d (want 1 to %d bytes)", ErrBadCapacity, bs, MaxBlockSize)
	case last == ^uint64(0):
		return Capacity{}, fmt.Errorf("%w: last LBA 0x%x: the block count does not fit in 64 bits", ErrBadCapacity, last)
	}
	c := Capacity{Blocks: last + 1, BlockSize: bs}
	if hi, _ := bits.Mul64(c.Blocks, uint64(bs)); hi != 0 {
		return Capacity{}, fmt.Errorf("%w: %d blocks of %d bytes: the size in bytes does not fit in 64 bits",
			ErrBadCapacity, c.Blocks, bs)
	}
	return c, nil
}

// ReportLUNs returns the LUN numbers the target reports.
func (s *Session) ReportLUNs(ctx context.Context) ([]int, error) {
	buf := make([]byte, 8+8*256)
	cdb := make([]byte, 12)
	cdb[0] = 0xa0
	binary.BigEndian.PutUint32(cdb[6:], uint32(len(buf)))
	res, err := s.executeRetryUA(ctx, &Command{LUN: 0, CDB: cdb, Read: buf})
	if err != nil {
		return nil, err
	}
	if res.N < 8 {
		return nil, fmt.Errorf("iscsi: REPORT LUNS returned %d bytes", res.N)
	}
	n := int(binary.BigEndian.Uint32(buf)) / 8
	n = min(n, (res.N-8)/8)
	luns := make([]int, 0, n)
	for i := 0; i < n; i++ {
		raw := binary.BigEndian.Uint16(buf[8+8*i:])
		switch raw >> 14 {
		case 0:
			luns = append(luns, int(raw&0xff))
		case 1:
			luns = append(luns, int(raw&0x3fff))
		}
	}
	return luns, nil
}

// TestUnitReady sends TEST UNIT READY to lun.
func (s *Session) TestUnitReady(ctx context.Context, lun int) error {
	_, err := s.executeRetryUA(ctx, &Command{LUN: lun, CDB: make([]byte, 6)})
	return err
}

// Read reads len(buf) bytes from lun at block lba with READ(16); len(buf)
// must be a multiple of blockSize. Like the other helpers of this file it
// sends the command again when it meets UNIT ATTENTION (after a login or a
// reset), a few times at most.
func (s *Session) Read(ctx context.Context, lun int, lba uint64, blockSize int, buf []byte) error {
	if err := checkBlocks(len(buf), blockSize); err != nil {
		return err
	}
	rw := pooledRW16(0x88, lba, len(buf), blockSize)
	rw.cmd = Command{LUN: lun, CDB: rw.cdb[:], Read: buf}
	res, err := s.executeRetryUA(ctx, &rw.cmd)
	rw.put()
	if err != nil {
		return err
	}
	if res.N != len(buf) {
		return fmt.Errorf("iscsi: READ(16) returned %d of %d bytes", res.N, len(buf))
	}
	return nil
}

// Write writes data to lun at block lba with WRITE(16). It returns nil only
// once the target reported GOOD status: the data is then on the target.
func (s *Session) Write(ctx context.Context, lun int, lba uint64, blockSize int, data []byte) error {
	if err := checkBlocks(len(data), blockSize); err != nil {
		return err
	}
	rw := pooledRW16(0x8a, lba, len(data), blockSize)
	rw.cmd = Command{LUN: lun, CDB: rw.cdb[:], Write: data}
	res, err := s.executeRetryUA(ctx, &rw.cmd)
	rw.put()
	if err != nil {
		return err
	}
	if res.N != len(data) {
		return fmt.Errorf("iscsi: WRITE(16) took %d of %d bytes", res.N, len(data))
	}
	return nil
}

// SynchronizeCache flushes lun's write cache (SYNCHRONIZE CACHE(10)).
func (s *Session) SynchronizeCache(ctx context.Context, lun int) error {
	cdb := make([]byte, 10)
	cdb[0] = 0x35
	_, err := s.executeRetryUA(ctx, &Command{LUN: lun, CDB: cdb})
	return err
}

// checkBlocks refuses a transfer that is not a whole number of blocks: the
// CDB's block count and the expected length would disagree.
func checkBlocks(n, blockSize int) error {
	if blockSize <= 0 || n%blockSize != 0 || n/blockSize > 0xffffffff {
		return fmt.Errorf("iscsi: %d bytes is not a whole number of %d-byte blocks (up to 2^32-1)", n, blockSize)
	}
	return nil
}

// rwPool holds the Commands of Read and Write with their CDBs: a Command
// passed to Execute escapes (a task keeps it for a retry: ERL 1's after a
// digest Reject, ERL 2's on another connection), so a fresh one would be
// an allocation per I/O. Nothing uses it once Execute has returned, as
// with any caller's Command.
var rwPool = sync.Pool{New: func() any { return new(rwCommand) }}

// rwCommand is a READ(16) or WRITE(16) Command and its CDB.
type rwCommand struct {
	cmd Command
	cdb [16]byte
}

// put returns rw to rwPool, keeping no reference to the caller's buffer.
func (rw *rwCommand) put() {
	rw.cmd = Command{}
	rwPool.Put(rw)
}

// pooledRW16 is an rwCommand from rwPool with rw16's CDB; the caller sets
// its Command.
func pooledRW16(op byte, lba uint64, n, blockSize int) *rwCommand {
	rw := rwPool.Get().(*rwCommand)
	rw.cdb = [16]byte{}
	rw.cdb[0] = op
	binary.BigEndian.PutUint64(rw.cdb[2:], lba)
	binary.BigEndian.PutUint32(rw.cdb[10:], uint32(n/blockSize))
	return rw
}

func rw16(op byte, lba uint64, n, blockSize int) []byte {
	cdb := make([]byte, 16)
	cdb[0] = op
	binary.BigEndian.PutUint64(cdb[2:], lba)
	binary.BigEndian.PutUint32(cdb[10:], uint32(n/blockSize))
	return cdb
}
