package reliability

// Leaks and soak: login/I/O/logout cycles against the in-memory target and
// tgtd, with goroutines, open file descriptors and the heap sampled between
// batches; the test fails when they grow. Short by default; SOAK=1 runs the
// long form (10,000 cycles against each target).

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/initiator"
	"github.com/goiscsi/iscsi/internal/peers"
	"github.com/goiscsi/iscsi/iscsitest"
	"github.com/goiscsi/iscsi/logout"
)

// soak reports whether the long forms run.
func soak() bool { return os.Getenv("SOAK") == "1" }

// soakWorkers is how many cycles run at once, each worker on its own target
// name so that its LogoutFromTarget meets only its own session.
const soakWorkers = 4

// sample is the process's resources between two batches of cycles, with no
// session open.
type sample struct {
	cycles     int
	goroutines int
	fds        int
	heap       uint64
}

func (s sample) String() string {
	return fmt.Sprintf("%6d cycles: %3d goroutines, %3d fds, heap %6.2f MiB", s.cycles, s.goroutines, s.fds, float64(s.heap)/(1<<20))
}

// takeSample waits for the goroutines of the last batch to be gone (bounded:
// goroutines that do not go are what the check finds), collects garbage and
// reads the counters.
func takeSample(cycles, baseGoroutines int) sample {
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > baseGoroutines && time.Now().Before(deadline) {
		runtime.Gosched()
		time.Sleep(time.Millisecond) // no event says a goroutine has exited
	}
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return sample{cycles: cycles, goroutines: runtime.NumGoroutine(), fds: openFDs(), heap: ms.HeapAlloc}
}

// openFDs counts the process's open file descriptors (-1 where /proc is not).
func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

// checkFlat fails on growth between the samples after warm-up: goroutines
// and fds must come back to where they were; the heap's median over the last
// third must stay within slack of its median over the first third.
func checkFlat(t *testing.T, name string, ss []sample, heapSlack uint64) {
	t.Helper()
	for _, s := range ss {
		t.Logf("%s: %v", name, s)
	}
	if len(ss) < 3 {
		t.Fatalf("%s: %d samples", name, len(ss))
	}
	base, end := ss[0], ss[len(ss)-1]
	if end.goroutines > base.goroutines {
		t.Errorf("%s: goroutines grew from %d to %d", name, base.goroutines, end.goroutines)
	}
	if end.fds > base.fds+2 {
		t.Errorf("%s: open fds grew from %d to %d", name, base.fds, end.fds)
	}
	third := max(len(ss)/3, 1)
	median := func(xs []sample) uint64 {
		hs := make([]uint64, len(xs))
		for i, x := range xs {
			hs[i] = x.heap
		}
		slices.Sort(hs)
		return hs[len(hs)/2]
	}
	first, last := median(ss[:third]), median(ss[len(ss)-third:])
	if last > first+heapSlack {
		t.Errorf("%s: heap grew from %.2f MiB to %.2f MiB (slack %.2f MiB)", name,
			float64(first)/(1<<20), float64(last)/(1<<20), float64(heapSlack)/(1<<20))
	}
	t.Logf("%s: %d cycles; goroutines %d→%d, fds %d→%d, heap %.2f→%.2f MiB (medians of first and last thirds %.2f→%.2f MiB)",
		name, end.cycles, base.goroutines, end.goroutines, base.fds, end.fds,
		float64(base.heap)/(1<<20), float64(end.heap)/(1<<20), float64(first)/(1<<20), float64(last)/(1<<20))
}

// cycle logs in to target at portal, writes random data at lba, reads it
// back and compares, and logs out of the target.
func cycle(ctx context.Context, in *initiator.Initiator, portal, target string, lun int, lba uint64, conns int, isid [6]byte) error {
	s, err := in.Login(ctx, portal, target, initiator.LoginOptions{Connections: conns, ISID: isid})
	if err != nil {
		return fmt.Errorf("login: %w", err)
	}
	data := make([]byte, 4096)
	rand.Read(data)
	if err := s.Write(ctx, lun, lba, 512, data); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got := make([]byte, len(data))
	if err := s.Read(ctx, lun, lba, 512, got); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("read back differs from what was written at LBA %d", lba)
	}
	op, err := in.LogoutFromTarget(target)
	if err != nil {
		return err
	}
	r, err := op.Wait(ctx)
	if err != nil {
		return err
	}
	if r.Outcome != logout.Success {
		return fmt.Errorf("logout: %v: %v", r.Outcome, r.Err())
	}
	return nil
}

// soakTarget is where a worker's cycles go.
type soakTarget struct {
	portal, name string
	lun          int
}

// runSoak runs cycles (a multiple of soakWorkers per batch) over the
// targets newTargets gives for each batch, sampling between batches.
func runSoak(t *testing.T, name string, cycles, batches, conns int, newTargets func(batch int) ([]soakTarget, func())) {
	in, err := initiator.New(initiator.Config{Name: initiatorIQN, NOPInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	perBatch := cycles / batches
	var samples []sample
	base := runtime.NumGoroutine()
	done := 0
	start := time.Now()
	for b := 0; b <= batches; b++ {
		n := perBatch
		if b == 0 {
			// Warm-up: one batch before the first sample, so that pools,
			// caches and the initiator's maps have their steady size.
			n = max(perBatch/4, soakWorkers)
		}
		targets, closeTargets := newTargets(b)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		var wg sync.WaitGroup
		errs := make(chan error, soakWorkers)
		for w := 0; w < soakWorkers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tg := targets[w%len(targets)]
				for i := w; i < n; i += soakWorkers {
					lba := uint64(w*4096 + (i/soakWorkers%256)*8)
					if err := cycle(ctx, in, tg.portal, tg.name, tg.lun, lba, conns, isid(w)); err != nil {
						errs <- fmt.Errorf("worker %d, cycle %d: %w", w, done+i, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		cancel()
		closeTargets()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		done += n
		samples = append(samples, takeSample(done, base))
	}
	t.Logf("%s: %d cycles in %v (%.1f ms each, %d at once)", name, done, time.Since(start),
		float64(time.Since(start).Milliseconds())/float64(done), soakWorkers)
	checkFlat(t, name, samples, max(samples[0].heap/4, 4<<20))
}

// soakCycles returns the number of cycles of the long or the short form.
func soakCycles(long, short int) (cycles, batches int) {
	if soak() {
		return long, 20
	}
	return short, 6
}

// TestSoakMem runs login/I/O/logout cycles (two connections per session)
// against the in-memory target over TCP; the targets are made anew for each
// batch, so that what the samples see is the initiator's.
func TestSoakMem(t *testing.T) {
	cycles, batches := soakCycles(10000, 1000)
	runSoak(t, "in-memory", cycles, batches, 2, func(int) ([]soakTarget, func()) {
		var tgs []*iscsitest.Target
		var out []soakTarget
		for w := 0; w < soakWorkers; w++ {
			name := fmt.Sprintf("%s-%d", memIQN, w)
			tg := iscsitest.NewTarget(iscsitest.Config{Name: name, LUNs: []int64{32 << 20}})
			tgs = append(tgs, tg)
			out = append(out, soakTarget{portal: tg.Addr(), name: name, lun: 0})
		}
		return out, func() {
			for _, tg := range tgs {
				tg.Close()
			}
		}
	})
}

// TestSoakTgtd runs the same cycles (one connection: tgtd takes no second)
// against tgtd, one target per worker.
func TestSoakTgtd(t *testing.T) {
	peers.Require(t, "tgtd", "tgtadm")
	cycles, batches := soakCycles(10000, 500)
	tg := peers.StartTgtd(t)
	var targets []soakTarget
	for w := 0; w < soakWorkers; w++ {
		name := fmt.Sprintf("iqn.2026-11.org.goiscsi:reliability-soak-%d", w)
		if _, err := tg.AddDiskTarget(w+1, name, 32<<20); err != nil {
			t.Fatal(err)
		}
		targets = append(targets, soakTarget{portal: tg.Addr, name: name, lun: 1})
	}
	runSoak(t, "tgtd", cycles, batches, 1, func(int) ([]soakTarget, func()) { return targets, func() {} })
	for w := range targets {
		if ns, err := tg.Sessions(w + 1); err != nil || len(ns) != 0 {
			t.Errorf("tgtd target %d: %d sessions left (%v)", w+1, len(ns), err)
		}
	}
}
