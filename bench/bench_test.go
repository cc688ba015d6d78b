//go:build linux

package bench_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goiscsi/iscsi/bench/internal/benchkit"
	"github.com/goiscsi/iscsi/internal/peers"
	"github.com/goiscsi/iscsi/session"
)

// The in-memory target runs in a child process (this test binary again), so
// that what these benchmarks measure in their own process is the initiator.
func TestMain(m *testing.M) {
	benchkit.MaybeServeChild()
	os.Exit(m.Run())
}

var (
	childOnce sync.Once
	child     *benchkit.Child
	childErr  error
)

// memTarget returns the in-memory target child, started once for the whole
// test binary.
func memTarget(b testing.TB) *benchkit.Child {
	b.Helper()
	childOnce.Do(func() {
		benchkit.RaiseOpenFiles(1 << 17)
		child, childErr = benchkit.StartChild(os.Args[0], 256<<20)
	})
	if childErr != nil {
		b.Fatal(childErr)
	}
	return child
}

// TestChild checks the plumbing the benchmarks stand on: the target child
// serves, a session logs in and out, the raw server answers.
func TestChild(t *testing.T) {
	c := memTarget(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ini, err := benchkit.NewInitiator()
	if err != nil {
		t.Fatal(err)
	}
	defer ini.Close()
	if err := benchkit.LoginN(ctx, ini, c.ISCSIAddr, benchkit.MemTargetName, 3, 2, 2); err != nil {
		t.Fatal(err)
	}
	lt, err := benchkit.TimeLogout(ctx, ini, benchkit.MemTargetName, 3)
	if err != nil {
		t.Fatal(err)
	}
	if lt.Conns != 6 {
		t.Errorf("logout saw %d connections, want 6", lt.Conns)
	}
	r, err := benchkit.RawClient(c.RawAddr, 4096, 4, 50*time.Millisecond)
	if err != nil || r.IOs == 0 {
		t.Fatalf("raw client: %+v, %v", r, err)
	}
}

// BenchmarkLogoutFromTarget measures LogoutFromTarget of n sessions of c
// connections on the in-memory target; ns/op is the wall time of one
// logout of them all (the logins are not timed).
func BenchmarkLogoutFromTarget(b *testing.B) {
	c := memTarget(b)
	for _, conns := range []int{1, 2} {
		for _, n := range logoutCounts() {
			b.Run(fmt.Sprintf("sessions=%d/conns=%d", n, conns), func(b *testing.B) {
				ctx := context.Background()
				// The CPU both processes spent in the logouts: wall
				// time on a shared machine moves with the load, CPU
				// time much less.
				var total, selfCPU, tgtCPU time.Duration
				var allocs, allocBytes uint64
				var gcs uint32
				for b.Loop() {
					b.StopTimer()
					ini, err := benchkit.NewInitiator()
					if err != nil {
						b.Fatal(err)
					}
					if err := benchkit.LoginN(ctx, ini, c.ISCSIAddr, benchkit.MemTargetName, n, conns, 64); err != nil {
						b.Fatal(err)
					}
					// BENCH_LOGOUTPROFILE=FILE profiles the logouts alone
					// (the last sub-benchmark's last one is kept).
					prof := os.Getenv("BENCH_LOGOUTPROFILE")
					var pf *os.File
					if prof != "" {
						if pf, err = os.Create(prof); err == nil {
							pprof.StartCPUProfile(pf)
						}
					}
					var ms0, ms1 runtime.MemStats
					runtime.ReadMemStats(&ms0)
					self0, tgt0 := benchkit.SelfCPU(), benchkit.ProcCPU(c.Pid)
					b.StartTimer()
					lt, err := benchkit.TimeLogout(ctx, ini, benchkit.MemTargetName, n)
					b.StopTimer()
					selfCPU += benchkit.SelfCPU() - self0
					runtime.ReadMemStats(&ms1)
					allocs += ms1.Mallocs - ms0.Mallocs
					allocBytes += ms1.TotalAlloc - ms0.TotalAlloc
					gcs += ms1.NumGC - ms0.NumGC
					if tgt1 := benchkit.ProcCPU(c.Pid); tgt0 >= 0 && tgt1 >= 0 {
						tgtCPU += tgt1 - tgt0
					}
					if pf != nil {
						pprof.StopCPUProfile()
						pf.Close()
					}
					if err != nil {
						b.Fatal(err)
					}
					total += lt.Wall
					ini.Close()
					b.StartTimer()
				}
				b.ReportMetric(float64(total.Nanoseconds())/float64(b.N)/float64(n), "ns/session")
				b.ReportMetric(float64(selfCPU.Nanoseconds())/float64(b.N)/float64(n), "initiator-cpu-ns/session")
				b.ReportMetric(float64(tgtCPU.Nanoseconds())/float64(b.N)/float64(n), "target-cpu-ns/session")
				b.ReportMetric(float64(allocs)/float64(b.N)/float64(n), "allocs/session")
				b.ReportMetric(float64(allocBytes)/float64(b.N)/float64(n), "B/session")
				b.ReportMetric(float64(gcs)/float64(b.N), "gc/logout")
			})
		}
	}
}

// logoutCounts are the session counts of the logout benchmarks: 1, 10, 100
// and 1000, or BENCH_LOGOUT_SESSIONS (e.g. 10000; mind the open-file limit).
func logoutCounts() []int {
	v := os.Getenv("BENCH_LOGOUT_SESSIONS")
	if v == "" {
		return []int{1, 10, 100, 1000}
	}
	var counts []int
	for _, f := range strings.Split(v, ",") {
		if n, err := strconv.Atoi(f); err == nil {
			counts = append(counts, n)
		}
	}
	return counts
}

// BenchmarkLogoutFloor is the floor under BenchmarkLogoutFromTarget: n
// loopback TCP connections to the same child process, each taking the
// least a logout must do, the way a Go program does it: a goroutine per
// connection writes a request, reads a 48-byte answer (a Logout
// Response's size) and closes; the child's goroutine reads the request,
// writes the answer and closes at the end of the stream. No iSCSI, no
// bookkeeping: what the kernel and Go's runtime cost per connection on
// this machine, which a logout of n sessions cannot go below.
func BenchmarkLogoutFloor(b *testing.B) {
	c := memTarget(b)
	for _, n := range logoutCounts() {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) {
			var total, selfCPU, tgtCPU time.Duration
			for b.Loop() {
				b.StopTimer()
				conns := make([]net.Conn, n)
				for i := range conns {
					nc, err := net.Dial("tcp", c.RawAddr)
					if err != nil {
						b.Fatal(err)
					}
					conns[i] = nc
				}
				self0, tgt0 := benchkit.SelfCPU(), benchkit.ProcCPU(c.Pid)
				var failed atomic.Int64
				var wg sync.WaitGroup
				b.StartTimer()
				start := time.Now()
				for _, nc := range conns {
					wg.Go(func() {
						defer nc.Close()
						var buf [48]byte
						binary.BigEndian.PutUint32(buf[:4], uint32(len(buf)))
						if _, err := nc.Write(buf[:4]); err != nil {
							failed.Add(1)
							return
						}
						if _, err := io.ReadFull(nc, buf[:]); err != nil {
							failed.Add(1)
						}
					})
				}
				wg.Wait()
				total += time.Since(start)
				b.StopTimer()
				// The child closes its side after the client's FIN: wait
				// for its CPU to settle (no signal crosses the process).
				tgtCPU += settledCPU(c.Pid) - tgt0
				selfCPU += benchkit.SelfCPU() - self0
				if f := failed.Load(); f > 0 {
					b.Fatalf("%d of %d connections failed their exchange", f, n)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(b.N)/float64(n), "ns/session")
			b.ReportMetric(float64(selfCPU.Nanoseconds())/float64(b.N)/float64(n), "initiator-cpu-ns/session")
			b.ReportMetric(float64(tgtCPU.Nanoseconds())/float64(b.N)/float64(n), "target-cpu-ns/session")
		})
	}
}

// settledCPU returns the CPU time of process pid once it stopped growing
// for two clock ticks in a row (at most a second).
func settledCPU(pid int) time.Duration {
	last := benchkit.ProcCPU(pid)
	for range 50 {
		time.Sleep(20 * time.Millisecond)
		now := benchkit.ProcCPU(pid)
		if now == last {
			return now
		}
		last = now
	}
	return last
}

// BenchmarkIdleSession measures what an idle single-connection session
// costs the initiator's process: heap after GC and goroutine stacks, per
// session, with 1,000 sessions open.
func BenchmarkIdleSession(b *testing.B) {
	c := memTarget(b)
	const n = 1000
	ctx := context.Background()
	var last benchkit.PerSession
	for b.Loop() {
		ps, err := benchkit.IdleMemory(ctx, c.ISCSIAddr, benchkit.MemTargetName, n, time.Second, func() {
			// BENCH_HEAPPROFILE=FILE writes a heap profile while the
			// sessions are up: what each one holds.
			if f := os.Getenv("BENCH_HEAPPROFILE"); f != "" {
				if w, err := os.Create(f); err == nil {
					pprof.Lookup("heap").WriteTo(w, 0)
					w.Close()
				}
			}
		})
		if err != nil {
			b.Fatal(err)
		}
		last = ps
	}
	b.ReportMetric(last.HeapBytes, "heapB/session")
	b.ReportMetric(last.StackBytes, "stackB/session")
	b.ReportMetric(last.Total(), "B/session")
	b.ReportMetric(last.Goroutines, "goroutines/session")
}

// BenchmarkRead measures 4 KiB random reads and 1 MiB sequential reads in
// this process (for pprof: -cpuprofile), on the in-memory target and, when
// tgtd is installed, on tgtd. ns/op is per I/O.
func BenchmarkRead(b *testing.B) {
	type tc struct {
		name   string
		bs, qd int
		random bool
	}
	cases := []tc{{"4k-qd1", 4096, 1, true}, {"4k-qd32", 4096, 32, true}, {"1m-seq-qd8", 1 << 20, 8, false}}
	b.Run("target=mem", func(b *testing.B) {
		c := memTarget(b)
		for _, k := range cases {
			b.Run(k.name, func(b *testing.B) { readLoad(b, c.ISCSIAddr, benchkit.MemTargetName, 0, k.bs, k.qd, k.random) })
		}
	})
	b.Run("target=tgtd", func(b *testing.B) {
		peers.Require(b, "tgtd", "tgtadm")
		dir := b.TempDir()
		if _, err := os.Stat("/dev/shm"); err == nil {
			d, err := os.MkdirTemp("/dev/shm", "goiscsi-bench-")
			if err == nil {
				dir = d
				b.Cleanup(func() { os.RemoveAll(d) })
			}
		}
		tg := peers.StartTgtdWith(b, peers.TgtdOptions{Dir: dir})
		const iqn = "iqn.2026-01.org.goiscsi:bench-tgtd"
		if _, err := tg.AddDiskTarget(1, iqn, 256<<20); err != nil {
			b.Fatal(err)
		}
		for _, k := range cases {
			b.Run(k.name, func(b *testing.B) { readLoad(b, tg.Addr, iqn, 1, k.bs, k.qd, k.random) })
		}
	})
}

func readLoad(b *testing.B, addr, iqn string, lun, bs, qd int, random bool) {
	ctx := context.Background()
	ini, err := benchkit.NewInitiator()
	if err != nil {
		b.Fatal(err)
	}
	defer ini.Close()
	if err := benchkit.LoginN(ctx, ini, addr, iqn, 1, 1, 1); err != nil {
		b.Fatal(err)
	}
	s := ini.Sessions(iqn)[0]
	capy, err := s.ReadCapacity(ctx, lun)
	if err != nil {
		b.Fatal(err)
	}
	blk := int(capy.BlockSize)
	per := uint64(bs / blk)
	span := capy.Blocks / per
	b.SetBytes(int64(bs))
	var mu sync.Mutex
	left := b.N
	var wg sync.WaitGroup
	errs := make(chan error, qd)
	b.ResetTimer()
	for w := range qd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, bs)
			x := uint64(w) * 7919
			for {
				mu.Lock()
				if left == 0 {
					mu.Unlock()
					return
				}
				left--
				mu.Unlock()
				x = x*6364136223846793005 + 1442695040888963407
				idx := x % span
				if !random {
					idx = uint64(left) % span
				}
				if err := s.Read(ctx, lun, idx*per, blk, buf); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	if _, err := s.Logout(ctx, session.LogoutOptions{}); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkSubmit is BenchmarkRead through Session.Submit: qd calls in
// flight, each submitted again from its Done on the connection's reader,
// with its CDB rebuilt in place (allocs/op is per I/O).
func BenchmarkSubmit(b *testing.B) {
	cases := []struct {
		name   string
		bs, qd int
	}{{"4k-qd1", 4096, 1}, {"4k-qd32", 4096, 32}, {"1m-seq-qd8", 1 << 20, 8}}
	b.Run("target=mem", func(b *testing.B) {
		c := memTarget(b)
		for _, k := range cases {
			b.Run(k.name, func(b *testing.B) { submitLoad(b, c.ISCSIAddr, benchkit.MemTargetName, 0, k.bs, k.qd) })
		}
	})
}

func submitLoad(b *testing.B, addr, iqn string, lun, bs, qd int) {
	ctx := context.Background()
	ini, err := benchkit.NewInitiator()
	if err != nil {
		b.Fatal(err)
	}
	defer ini.Close()
	if err := benchkit.LoginN(ctx, ini, addr, iqn, 1, 1, 1); err != nil {
		b.Fatal(err)
	}
	s := ini.Sessions(iqn)[0]
	capy, err := s.ReadCapacity(ctx, lun)
	if err != nil {
		b.Fatal(err)
	}
	blk := int(capy.BlockSize)
	span := capy.Blocks / uint64(bs/blk)
	b.SetBytes(int64(bs))
	b.ReportAllocs()
	var left atomic.Int64
	left.Store(int64(b.N))
	finished := make(chan error, qd)
	cdbs := make([][16]byte, qd)
	var done func(*session.Call)
	submit := func(c *session.Call) {
		if left.Add(-1) < 0 {
			finished <- nil
			return
		}
		c.Tag = c.Tag*6364136223846793005 + 1442695040888963407
		lba := (c.Tag % span) * uint64(bs/blk)
		cdb := c.Cmd.CDB[:16]
		cdb[0] = 0x88
		for i := range 8 {
			cdb[2+i] = byte(lba >> (56 - 8*i))
		}
		n := uint32(bs / blk)
		cdb[10], cdb[11], cdb[12], cdb[13] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
		if err := s.Submit(c); err != nil {
			finished <- err
		}
	}
	done = func(c *session.Call) {
		if c.Err != nil {
			finished <- c.Err
			return
		}
		submit(c)
	}
	calls := make([]session.Call, qd)
	b.ResetTimer()
	for i := range calls {
		calls[i] = session.Call{Cmd: session.Command{LUN: lun, CDB: cdbs[i][:16], Read: make([]byte, bs)}, Done: done, Tag: uint64(i) * 7919}
		submit(&calls[i])
	}
	for range qd {
		if err := <-finished; err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if _, err := s.Logout(ctx, session.LogoutOptions{}); err != nil {
		b.Fatal(err)
	}
}
