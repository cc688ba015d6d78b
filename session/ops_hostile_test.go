package session

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/internal/faketarget"
	"github.com/goiscsi/iscsi/pdu"
)

// capacityData is READ CAPACITY(16) parameter data with the given last LBA
// and block length, n bytes of it.
func capacityData(last uint64, bs uint32, n int) []byte {
	b := make([]byte, 32)
	binary.BigEndian.PutUint64(b, last)
	binary.BigEndian.PutUint32(b[8:], bs)
	return b[:n]
}

// answerReadCapacity runs ReadCapacity against a fake target that answers
// the command with data and GOOD status, and returns what ReadCapacity
// returned.
func answerReadCapacity(t *testing.T, data []byte) (Capacity, error) {
	t.Helper()
	s, f := fakeSession(t, testConfig(), faketarget.Login{})
	type out struct {
		c   Capacity
		err error
	}
	ch := make(chan out, 1)
	go func() {
		c, err := s.ReadCapacity(context.Background(), 1)
		ch <- out{c, err}
	}()
	x := f.Expect(pdu.OpSCSICommand)
	c := x.PDU.(*pdu.SCSICommand)
	if c.CDB[0] != 0x9e || c.CDB[1]&0x1f != 0x10 || binary.BigEndian.Uint32(c.CDB[10:]) != 32 || c.ExpectedDataTransferLength != 32 {
		t.Errorf("READ CAPACITY(16) command: CDB % x, expected length %d", c.CDB, c.ExpectedDataTransferLength)
	}
	f.ReadData(x, data)
	select {
	case o := <-ch:
		return o.c, o.err
	case <-time.After(wait):
		t.Fatalf("ReadCapacity did not return in %v", wait)
	}
	panic("unreachable")
}

// TestReadCapacityHostile: a READ CAPACITY answer that would make a caller
// divide by zero, wrap the block count or the size in bytes, or read fields
// the target did not send is an error wrapping ErrBadCapacity that names the
// field and its value, never a Capacity.
func TestReadCapacityHostile(t *testing.T) {
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"block size 0", capacityData(2047, 0, 32), "block size 0 "},
		{"block size 2 GiB", capacityData(2047, 1<<31, 32), "block size 2147483648 "},
		{"block size 4 GiB - 1", capacityData(0, 0xffffffff, 32), "block size 4294967295 "},
		{"block size just over the maximum", capacityData(0, MaxBlockSize+1, 32), "block size 16777217 "},
		{"last LBA 2^64-1", capacityData(^uint64(0), 512, 32), "last LBA 0xffffffffffffffff"},
		{"size in bytes over 2^64-1", capacityData(1<<62, 4096, 32), "4611686018427387905 blocks of 4096 bytes"},
		{"size in bytes 2^64", capacityData(1<<55-1, 512, 32), "36028797018963968 blocks of 512 bytes"},
		{"8 bytes of data", capacityData(2047, 512, 8), "8 bytes of parameter data"},
		{"11 bytes of data", capacityData(2047, 512, 11), "11 bytes of parameter data"},
		{"no data", nil, "0 bytes of parameter data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := answerReadCapacity(t, tt.data)
			if !errors.Is(err, ErrBadCapacity) {
				t.Fatalf("ReadCapacity = %+v, %v; want an error wrapping ErrBadCapacity", c, err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			if c != (Capacity{}) {
				t.Errorf("ReadCapacity returned %+v with its error", c)
			}
		})
	}
}

// TestReadCapacityValid: the answers at the edges of what is accepted.
func TestReadCapacityValid(t *testing.T) {
	tests := []struct {
		name  string
		data  []byte
		want  Capacity
		bytes uint64
	}{
		{"1 MiB of 512-byte blocks", capacityData(2047, 512, 32), Capacity{Blocks: 2048, BlockSize: 512}, 1 << 20},
		{"only the 12 bytes used", capacityData(2047, 4096, 12), Capacity{Blocks: 2048, BlockSize: 4096}, 8 << 20},
		{"one block of the largest size", capacityData(0, MaxBlockSize, 32), Capacity{Blocks: 1, BlockSize: MaxBlockSize}, MaxBlockSize},
		{"520-byte blocks", capacityData(99, 520, 32), Capacity{Blocks: 100, BlockSize: 520}, 52000},
		{"the largest size in bytes", capacityData(1<<55-2, 512, 32), Capacity{Blocks: 1<<55 - 1, BlockSize: 512}, ^uint64(0) - 511},
		{"the largest block count", capacityData(^uint64(0)-1, 1, 32), Capacity{Blocks: ^uint64(0), BlockSize: 1}, ^uint64(0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := answerReadCapacity(t, tt.data)
			if err != nil {
				t.Fatalf("ReadCapacity: %v", err)
			}
			if c != tt.want || c.Bytes() != tt.bytes {
				t.Errorf("ReadCapacity = %+v (%d bytes), want %+v (%d bytes)", c, c.Bytes(), tt.want, tt.bytes)
			}
		})
	}
}
