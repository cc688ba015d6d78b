package testutil

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// RegionIO is one worker's block I/O in a RegionLoad: Write writes b at
// lba, Read reads len(b) bytes from lba into b. A nil Read makes the
// worker write only.
type RegionIO struct {
	Write, Read func(lba uint64, b []byte) error
}

// SessionRegionIO is a RegionIO through s's Write and Read (a
// *session.Session) on lun, in blocks of blockSize bytes, with ctx.
func SessionRegionIO(ctx context.Context, s BlockIO, lun, blockSize int) RegionIO {
	return RegionIO{
		Write: func(lba uint64, b []byte) error { return s.Write(ctx, lun, lba, blockSize, b) },
		Read:  func(lba uint64, b []byte) error { return s.Read(ctx, lun, lba, blockSize, b) },
	}
}

// RegionLoadConfig says what a RegionLoad runs.
type RegionLoadConfig struct {
	// Workers is how many writers run, each in a goroutine of its own
	// and on blocks of its own.
	Workers int
	// Blocks is the size of one write in blocks of BlockSize bytes (512
	// when 0).
	Blocks, BlockSize int
	// Slots is how many writes' worth of blocks each worker owns (1 when
	// 0): write i of worker w goes to LBA (w*Slots + i%Slots) * Blocks.
	Slots int
	// StopOnError ends a worker at its first failed operation; without
	// it a worker goes on after a failure until the load is stopped or
	// the context given to StartRegionLoad is done.
	StopOnError bool
	// NewIO returns worker w's I/O; each worker calls it once, in its
	// own goroutine.
	NewIO func(w int) RegionIO
}

// maxLoadErrors bounds the errors a RegionLoad keeps: a load that fails
// fast (its session closed) must not grow without bound before it is
// stopped.
const maxLoadErrors = 64

// RegionLoad is the load of the recovery tests: writers that each own
// blocks of a LUN and write them over and over, with RegionData, reading
// each acknowledged write back (when their RegionIO has a Read), and that
// keep the last acknowledged write of every LBA they write at. The test
// cuts connections or restarts the target meanwhile, waits for the load to
// go on (WaitOps), stops it (Stop) and checks that the LUN holds every
// acknowledged write.
type RegionLoad struct {
	cfg  RegionLoadConfig
	ctx  context.Context
	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
	ops  atomic.Int64

	mu      sync.Mutex
	acked   map[uint64][]byte
	errs    []error
	dropped int           // errors past maxLoadErrors, not kept
	tick    chan struct{} // closed at the next operation; nil while nobody waits
	stopped bool          // Stop was called by the test
}

// StartRegionLoad starts cfg.Workers writers. A failed operation ends its
// worker once ctx is done (ctx should be the one the I/O runs with). The
// load is stopped when the test ends if the test did not stop it, its
// errors then logged.
func StartRegionLoad(t testing.TB, ctx context.Context, cfg RegionLoadConfig) *RegionLoad {
	t.Helper()
	if cfg.BlockSize == 0 {
		cfg.BlockSize = 512
	}
	if cfg.Slots == 0 {
		cfg.Slots = 1
	}
	ld := &RegionLoad{cfg: cfg, ctx: ctx, stop: make(chan struct{}), acked: map[uint64][]byte{}}
	for w := range cfg.Workers {
		ld.wg.Add(1)
		go ld.work(w)
	}
	t.Cleanup(func() {
		ld.mu.Lock()
		byTest := ld.stopped
		ld.mu.Unlock()
		if byTest {
			return
		}
		_, errs := ld.halt()
		for _, err := range errs {
			t.Logf("region load, stopped as the test ended: %v", err)
		}
	})
	return ld
}

// work is worker w's loop.
func (ld *RegionLoad) work(w int) {
	defer ld.wg.Done()
	io := ld.cfg.NewIO(w)
	size := ld.cfg.Blocks * ld.cfg.BlockSize
	back := make([]byte, size)
	for i := 0; ; i++ {
		select {
		case <-ld.stop:
			return
		default:
		}
		lba := uint64((w*ld.cfg.Slots + i%ld.cfg.Slots) * ld.cfg.Blocks)
		data := RegionData(w, i, size)
		err := io.Write(lba, data)
		if err == nil {
			ld.mu.Lock()
			ld.acked[lba] = data
			ld.mu.Unlock()
			if io.Read != nil {
				if err = io.Read(lba, back); err == nil && !bytes.Equal(back, data) {
					err = fmt.Errorf("read back differs from the write just acknowledged at byte %d", FirstDiff(back, data))
				}
			}
		}
		if err != nil {
			ld.fail(fmt.Errorf("worker %d, operation %d at LBA %d: %w", w, i, lba, err))
		}
		ld.done()
		if err != nil && (ld.cfg.StopOnError || ld.ctx.Err() != nil) {
			return
		}
	}
}

// fail keeps err, up to maxLoadErrors.
func (ld *RegionLoad) fail(err error) {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	if len(ld.errs) < maxLoadErrors {
		ld.errs = append(ld.errs, err)
	} else {
		ld.dropped++
	}
}

// done counts an operation and wakes those waiting for one.
func (ld *RegionLoad) done() {
	ld.ops.Add(1)
	ld.mu.Lock()
	if ld.tick != nil {
		close(ld.tick)
		ld.tick = nil
	}
	ld.mu.Unlock()
}

// next returns a channel closed at the next operation.
func (ld *RegionLoad) next() <-chan struct{} {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	if ld.tick == nil {
		ld.tick = make(chan struct{})
	}
	return ld.tick
}

// Ops returns how many operations the workers have done: a write and its
// read back, or a failed write, each count once, failed or not.
func (ld *RegionLoad) Ops() int64 { return ld.ops.Load() }

// Errors returns the errors met so far (a copy).
func (ld *RegionLoad) Errors() []error {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	return ld.errorsLocked()
}

func (ld *RegionLoad) errorsLocked() []error {
	errs := append([]error(nil), ld.errs...)
	if ld.dropped > 0 {
		errs = append(errs, fmt.Errorf("%d more errors, not kept", ld.dropped))
	}
	return errs
}

// WaitOps waits until the load has done n more operations than when it
// was called, failing the test (Fatalf, with the errors met so far) if it
// has not within d.
func (ld *RegionLoad) WaitOps(t testing.TB, n int64, d time.Duration) {
	t.Helper()
	ld.WaitTotal(t, ld.Ops()+n, d)
}

// WaitTotal waits until the load has done want operations in all, as
// WaitOps does: for a load whose workers stop by themselves
// (StopOnError), whose operations may all be done before the wait begins.
func (ld *RegionLoad) WaitTotal(t testing.TB, want int64, d time.Duration) {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		ch := ld.next()
		if ld.Ops() >= want {
			return
		}
		select {
		case <-ch:
		case <-timer.C:
			t.Fatalf("I/O stalled: %d operations after %v, want %d (errors: %v)", ld.Ops(), d, want, errors.Join(ld.Errors()...))
		}
	}
}

// Stop stops the load, waits for its workers to end (a worker in the
// middle of an operation ends once its I/O returns: the I/O must heed its
// context) and returns the last acknowledged write at each LBA written and
// the errors met. Calls after the first return the same.
func (ld *RegionLoad) Stop() (acked map[uint64][]byte, errs []error) {
	ld.mu.Lock()
	ld.stopped = true
	ld.mu.Unlock()
	return ld.halt()
}

// halt is Stop, for the test or its cleanup.
func (ld *RegionLoad) halt() (map[uint64][]byte, []error) {
	ld.once.Do(func() { close(ld.stop) })
	ld.wg.Wait()
	ld.mu.Lock()
	defer ld.mu.Unlock()
	return ld.acked, ld.errorsLocked()
}

// RegionData is write i of worker w, size bytes: every 8 bytes say whose
// and which write it is and where in it they are (w<<56 | i<<24 |
// offset), so that a difference found names the write it came from.
func RegionData(w, i, size int) []byte {
	b := make([]byte, size)
	var word [8]byte
	for off := 0; off < size; off += 8 {
		binary.BigEndian.PutUint64(word[:], uint64(w)<<56|uint64(i)<<24|uint64(off))
		copy(b[off:], word[:])
	}
	return b
}
