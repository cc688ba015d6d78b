package testutil

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// memLUN is an in-memory LUN of 512-byte blocks.
type memLUN struct {
	mu sync.Mutex
	b  []byte
}

func (m *memLUN) io() RegionIO {
	return RegionIO{
		Write: func(lba uint64, b []byte) error {
			m.mu.Lock()
			defer m.mu.Unlock()
			copy(m.b[lba*512:], b)
			return nil
		},
		Read: func(lba uint64, b []byte) error {
			m.mu.Lock()
			defer m.mu.Unlock()
			copy(b, m.b[lba*512:])
			return nil
		},
	}
}

// The LUN holds every LBA's last acknowledged write, each worker wrote
// only its own slots, and nothing failed.
func TestRegionLoadAckedMatchesLUN(t *testing.T) {
	const workers, blocks, slots = 4, 2, 3
	lun := &memLUN{b: make([]byte, workers*slots*blocks*512)}
	// Each worker says when it has written each of its slots once: how
	// the 200 operations fall on the workers is the scheduler's choice (a
	// loaded -race run gave one worker nearly all of them).
	var writes [workers]atomic.Int32
	var covered sync.WaitGroup
	covered.Add(workers)
	ld := StartRegionLoad(t, context.Background(), RegionLoadConfig{Workers: workers, Blocks: blocks, Slots: slots,
		NewIO: func(w int) RegionIO {
			io := lun.io()
			write := io.Write
			io.Write = func(lba uint64, b []byte) error {
				err := write(lba, b)
				if writes[w].Add(1) == slots {
					covered.Done()
				}
				return err
			}
			return io
		}})
	ld.WaitOps(t, 200, 10*time.Second)
	all := make(chan struct{})
	go func() { covered.Wait(); close(all) }()
	select {
	case <-all:
	case <-time.After(10 * time.Second):
		t.Fatal("a worker did not write each of its slots within 10 s")
	}
	acked, errs := ld.Stop()
	for _, err := range errs {
		t.Errorf("load error: %v", err)
	}
	if n := ld.Ops(); n < 200 {
		t.Errorf("%d operations after waiting for 200", n)
	}
	if len(acked) != workers*slots {
		t.Errorf("%d LBAs acknowledged, want %d", len(acked), workers*slots)
	}
	for lba, data := range acked {
		if i := FirstDiff(lun.b[lba*512:lba*512+uint64(len(data))], data); i >= 0 {
			t.Errorf("LBA %d: the LUN differs from the acknowledged write at byte %d", lba, i)
		}
		if w, want := binary.BigEndian.Uint64(data)>>56, lba/(slots*blocks); w != want {
			t.Errorf("LBA %d written by worker %d, want %d", lba, w, want)
		}
	}
	if again, _ := ld.Stop(); len(again) != len(acked) {
		t.Errorf("a second Stop returns %d LBAs, the first %d", len(again), len(acked))
	}
}

// A read back that differs from the write is an error naming the worker;
// StopOnError ends each worker at it, the write still acknowledged.
func TestRegionLoadReadBackDiffers(t *testing.T) {
	const workers = 3
	lun := &memLUN{b: make([]byte, workers*4*512)}
	ld := StartRegionLoad(t, context.Background(), RegionLoadConfig{Workers: workers, Blocks: 4, StopOnError: true,
		NewIO: func(int) RegionIO {
			io := lun.io()
			io.Read = func(lba uint64, b []byte) error { clear(b); return nil } // a stale read
			return io
		}})
	ld.WaitTotal(t, workers, 10*time.Second)
	acked, errs := ld.Stop()
	if len(errs) != workers {
		t.Fatalf("%d errors, want one per worker: %v", len(errs), errs)
	}
	for _, err := range errs {
		if !strings.Contains(err.Error(), "read back differs") || !strings.Contains(err.Error(), "worker ") {
			t.Errorf("error %q does not say the read back differed, and whose", err)
		}
	}
	if len(acked) != workers || ld.Ops() != workers {
		t.Errorf("%d LBAs acknowledged, %d operations: want %d and %d", len(acked), ld.Ops(), workers, workers)
	}
}

// fatalTB records the first Fatalf and ends its goroutine as testing.T
// does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// WaitOps on a load whose workers all ended fails with the errors met.
func TestRegionLoadWaitOpsFailsOnStall(t *testing.T) {
	ld := StartRegionLoad(t, context.Background(), RegionLoadConfig{Workers: 2, Blocks: 1, StopOnError: true,
		NewIO: func(int) RegionIO {
			return RegionIO{Write: func(uint64, []byte) error { return errors.New("target gone") }}
		}})
	f := &fatalTB{TB: t}
	ended := make(chan struct{})
	go func() {
		defer close(ended) // runs after Fatalf's Goexit too
		ld.WaitOps(f, 10, 50*time.Millisecond)
	}()
	Recv(t, ended, 10*time.Second, "WaitOps on a stalled load, bounded at 50 ms")
	if f.msg == "" {
		t.Fatal("WaitOps returned on a load that did 2 of 10 operations")
	}
	if !strings.Contains(f.msg, "I/O stalled") || !strings.Contains(f.msg, "target gone") {
		t.Errorf("WaitOps failed with %q: want the stall and the errors", f.msg)
	}
	if _, errs := ld.Stop(); len(errs) != 2 {
		t.Errorf("%d errors, want 2: %v", len(errs), errs)
	}
}

// Stop returns only once every worker's operation under way has returned,
// and acknowledged.
func TestRegionLoadStopWaitsForWorkers(t *testing.T) {
	const workers = 4
	lun := &memLUN{b: make([]byte, workers*512)}
	gate := make(chan struct{})
	var started, finished atomic.Int32
	entered := make(chan struct{}, workers)
	ld := StartRegionLoad(t, context.Background(), RegionLoadConfig{Workers: workers, Blocks: 1,
		NewIO: func(int) RegionIO {
			io := lun.io()
			write := io.Write
			io.Write = func(lba uint64, b []byte) error {
				if started.Add(1) <= workers {
					entered <- struct{}{}
					<-gate // each worker's first write waits for the test
				}
				defer finished.Add(1)
				return write(lba, b)
			}
			return io
		}})
	for range workers {
		Recv(t, entered, 10*time.Second, "every worker in its first write")
	}
	stopped := Go(func() map[uint64][]byte { acked, _ := ld.Stop(); return acked })
	Recv(t, (<-chan struct{})(ld.stop), 10*time.Second, "Stop closing the load's stop channel")
	close(gate)
	acked := Recv(t, stopped, 10*time.Second, "Stop")
	if s, f := started.Load(), finished.Load(); s != f {
		t.Errorf("Stop returned with %d writes started, %d finished", s, f)
	}
	if len(acked) != workers {
		t.Errorf("%d LBAs acknowledged after Stop, want the %d writes held at the gate", len(acked), workers)
	}
}

// A load that fails fast keeps at most maxLoadErrors errors and says how
// many more there were; the cleanup of a test that never stopped its load
// stops it.
func TestRegionLoadErrorsBoundedAndCleanupStops(t *testing.T) {
	var ld *RegionLoad
	t.Run("load", func(t *testing.T) {
		ld = StartRegionLoad(t, context.Background(), RegionLoadConfig{Workers: 2, Blocks: 1,
			NewIO: func(int) RegionIO {
				return RegionIO{Write: func(uint64, []byte) error { return errors.New("session closed") }}
			}})
		ld.WaitOps(t, 2*maxLoadErrors, 10*time.Second)
		errs := ld.Errors()
		if len(errs) != maxLoadErrors+1 || !strings.Contains(errs[maxLoadErrors].Error(), "more errors, not kept") {
			t.Errorf("%d errors, the last %v: want %d kept and a count of the rest", len(errs), errs[len(errs)-1], maxLoadErrors)
		}
	})
	select {
	case <-ld.stop:
	default:
		t.Fatal("the load was not stopped when its test ended")
	}
	done := Go(func() int64 { ld.Stop(); return ld.Ops() })
	n := Recv(t, done, 10*time.Second, "Stop of a load the cleanup stopped")
	if m := ld.Ops(); m != n {
		t.Errorf("operations went on after Stop: %d, then %d", n, m)
	}
}

func TestRegionData(t *testing.T) {
	b := RegionData(3, 5, 20)
	if len(b) != 20 {
		t.Fatalf("RegionData(3, 5, 20): %d bytes", len(b))
	}
	for off, want := range []uint64{3<<56 | 5<<24, 3<<56 | 5<<24 | 8} {
		if got := binary.BigEndian.Uint64(b[off*8:]); got != want {
			t.Errorf("word %d: %#x, want %#x", off, got, want)
		}
	}
	word := binary.BigEndian.AppendUint64(nil, 3<<56|5<<24|16)
	if FirstDiff(b[16:], word[:4]) >= 0 {
		t.Errorf("the tail: % x, want the first 4 bytes of word 2, % x", b[16:], word[:4])
	}
}
