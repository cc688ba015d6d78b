package testutil

import (
	"context"
	"fmt"
	"sync"
	"testing"
)

// BlockIO is the block I/O of a logged-in session (*session.Session).
type BlockIO interface {
	Write(ctx context.Context, lun int, lba uint64, blockSize int, data []byte) error
	Read(ctx context.Context, lun int, lba uint64, blockSize int, buf []byte) error
}

// WriteVerify writes data at lba of lun, reads it back and compares byte
// for byte.
func WriteVerify(ctx context.Context, s BlockIO, lun int, lba uint64, blockSize int, data []byte) error {
	if err := s.Write(ctx, lun, lba, blockSize, data); err != nil {
		return fmt.Errorf("write %d bytes at LUN %d LBA %d: %w", len(data), lun, lba, err)
	}
	got := make([]byte, len(data))
	if err := s.Read(ctx, lun, lba, blockSize, got); err != nil {
		return fmt.Errorf("read %d bytes at LUN %d LBA %d: %w", len(data), lun, lba, err)
	}
	if i := FirstDiff(got, data); i >= 0 {
		return fmt.Errorf("LUN %d LBA %d: %d bytes read back differ from those written, first at offset %d", lun, lba, len(data), i)
	}
	return nil
}

// ConcurrentIO runs n commands at once, released together, each writing
// Random(seed+i) of size bytes to its own region of lun and reading it
// back; every failure is a test error.
func ConcurrentIO(t testing.TB, ctx context.Context, s BlockIO, lun, blockSize, n, size int, seed uint64) {
	t.Helper()
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := Random(seed+uint64(i), size)
			<-start
			if err := WriteVerify(ctx, s, lun, uint64(i*size/blockSize), blockSize, data); err != nil {
				errs <- fmt.Errorf("command %d: %w", i, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
