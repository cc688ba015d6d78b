package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/goiscsi/iscsi/session"
)

// perfResult is what perf measured; --json prints it as is.
type perfResult struct {
	Command     string  `json:"command"`
	Target      string  `json:"target"`
	LUN         int     `json:"lun"`
	RW          string  `json:"rw"`
	Pattern     string  `json:"pattern"`
	BlockSize   int     `json:"bs"`
	QueueDepth  int     `json:"qd"`
	Conns       int     `json:"conns"`
	DurationSec float64 `json:"durationSec"`
	IOs         int64   `json:"ios"`
	Errors      int64   `json:"errors"`
	FirstError  string  `json:"firstError,omitempty"`
	IOPS        float64 `json:"iops"`
	MBPerSec    float64 `json:"mbPerSec"` // 10^6 bytes per second
	Latency     struct {
		Mean float64 `json:"mean"`
		P50  float64 `json:"p50"`
		P99  float64 `json:"p99"`
		P999 float64 `json:"p999"`
		Max  float64 `json:"max"`
	} `json:"latencyUs"`
	// CPU time of the whole process during the run, from getrusage.
	CPUUserSec  float64 `json:"cpuUserSec"`
	CPUSysSec   float64 `json:"cpuSysSec"`
	CPUUsPerIO  float64 `json:"cpuUsPerIO"`
	CPUMeasured bool    `json:"cpuMeasured"`
}

func runPerf(ctx context.Context, a *app, args []string) error {
	var tf targetFlags
	fs := a.flags("--portal HOST[:PORT] [--target NAME] [--lun N] [--bs BYTES] [--qd N] [--duration D] [--rw read|write] [--pattern random|sequential] [flags]")
	tf.register(fs, a)
	lun := fs.Int("lun", -1, "logical unit; -1 means the first disk the target reports")
	bsFlag := fs.Int("bs", 4096, "bytes per command (a multiple of the LUN's block size)")
	qd := fs.Int("qd", 16, "queue depth: commands in flight")
	dur := fs.Duration("duration", 10*time.Second, "how long to run")
	rw := fs.String("rw", "read", "read or write (write overwrites the LUN's data)")
	pattern := fs.String("pattern", "random", "random or sequential")
	conns := fs.Int("conns", 1, "connections of the session (MC/S); commands are spread over them")
	if _, err := a.parse(fs, args); err != nil {
		return err
	}
	switch {
	case *rw != "read" && *rw != "write":
		return invalidArgf("--rw %q: want read or write", *rw)
	case *pattern != "random" && *pattern != "sequential":
		return invalidArgf("--pattern %q: want random or sequential", *pattern)
	case *qd < 1 || *bsFlag < 1 || *conns < 1:
		return invalidArgf("--qd, --bs and --conns must be positive")
	case *dur <= 0:
		return invalidArgf("--duration must be positive")
	}
	tf.conns = *conns
	res := perfResult{Command: "perf", RW: *rw, Pattern: *pattern, BlockSize: *bsFlag, QueueDepth: *qd, Conns: *conns}
	err := a.withSession(ctx, &tf, *conns, func(s *session.Session) error {
		res.Target = tf.target
		l, err := diskLUN(ctx, s, *lun)
		if err != nil {
			return err
		}
		res.LUN = l
		c, err := s.ReadCapacity(ctx, l)
		if err != nil {
			return &stepError{step: "READ CAPACITY", err: err}
		}
		blk := int(c.BlockSize)
		if *bsFlag%blk != 0 {
			return invalidArgf("--bs %d is not a multiple of the block size %d", *bsFlag, blk)
		}
		per := uint64(*bsFlag / blk)
		span := c.Blocks / per
		if span == 0 {
			return invalidArgf("--bs %d is larger than LUN %d", *bsFlag, l)
		}
		a.printf("perf: %s %s, bs %d, qd %d, %d connection(s), %s on LUN %d of %s (%s)\n",
			*pattern, *rw, *bsFlag, *qd, *conns, *dur, l, safe(tf.target), humanBytes(c.Bytes()))
		if *qd > 1 {
			// Many commands in flight: Submit, no goroutine per command.
			return measureAsync(ctx, s, l, blk, per, span, *dur, *qd, *rw == "write", *pattern == "random", &res)
		}
		return measure(ctx, s, l, blk, per, span, *dur, *qd, *rw == "write", *pattern == "random", &res)
	})
	if err != nil {
		return err
	}
	if a.json {
		a.printJSON(res)
		return nil
	}
	a.printf("%d I/Os in %.2f s: %.0f IOPS, %.1f MB/s\n", res.IOs, res.DurationSec, res.IOPS, res.MBPerSec)
	a.printf("latency (µs): mean %.1f  p50 %.1f  p99 %.1f  p99.9 %.1f  max %.1f\n",
		res.Latency.Mean, res.Latency.P50, res.Latency.P99, res.Latency.P999, res.Latency.Max)
	if res.CPUMeasured {
		a.printf("CPU: %.2f µs per I/O (user %.2f s, sys %.2f s)\n", res.CPUUsPerIO, res.CPUUserSec, res.CPUSysSec)
	}
	if res.Errors > 0 {
		a.printf("%d I/Os failed; the first: %s\n", res.Errors, safe(res.FirstError))
	}
	return nil
}

// measure runs qd workers for d and fills res.
func measure(ctx context.Context, s *session.Session, lun, blk int, per, span uint64, d time.Duration, qd int, write, random bool, res *perfResult) error {
	rctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var next atomic.Uint64
	var ios, errs atomic.Int64
	var firstErr atomic.Value
	lats := make([][]time.Duration, qd)
	var wg sync.WaitGroup
	cpu0, cpuOK := processCPU()
	start := time.Now()
	for w := range qd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, int(per)*blk)
			if write {
				rand.Read(buf)
			}
			r := mrand.New(mrand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			mine := make([]time.Duration, 0, 1<<14)
			for rctx.Err() == nil {
				var idx uint64
				if random {
					idx = r.Uint64N(span)
				} else {
					idx = (next.Add(1) - 1) % span
				}
				t0 := time.Now()
				var err error
				if write {
					err = s.Write(rctx, lun, idx*per, blk, buf)
				} else {
					err = s.Read(rctx, lun, idx*per, blk, buf)
				}
				if err != nil {
					if rctx.Err() != nil {
						break // the run ended mid-command
					}
					errs.Add(1)
					firstErr.CompareAndSwap(nil, trimPrefixes(err.Error()))
					continue
				}
				mine = append(mine, time.Since(t0))
				ios.Add(1)
			}
			lats[w] = mine
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu1, _ := processCPU()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	all := slices.Concat(lats...)
	slices.Sort(all)
	res.DurationSec = elapsed.Seconds()
	res.IOs = ios.Load()
	res.Errors = errs.Load()
	if e, ok := firstErr.Load().(string); ok {
		res.FirstError = e
	}
	res.IOPS = float64(res.IOs) / res.DurationSec
	res.MBPerSec = res.IOPS * float64(int(per)*blk) / 1e6
	if len(all) > 0 {
		var sum time.Duration
		for _, l := range all {
			sum += l
		}
		us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
		res.Latency.Mean = us(sum / time.Duration(len(all)))
		res.Latency.P50 = us(percentile(all, 50))
		res.Latency.P99 = us(percentile(all, 99))
		res.Latency.P999 = us(percentile(all, 99.9))
		res.Latency.Max = us(all[len(all)-1])
	}
	if cpuOK {
		res.CPUMeasured = true
		res.CPUUserSec = (cpu1.user - cpu0.user).Seconds()
		res.CPUSysSec = (cpu1.sys - cpu0.sys).Seconds()
		if res.IOs > 0 {
			res.CPUUsPerIO = (res.CPUUserSec + res.CPUSysSec) * 1e6 / float64(res.IOs)
		}
	}
	if res.IOs == 0 && res.Errors > 0 {
		return fmt.Errorf("every I/O failed; the first: %s", res.FirstError)
	}
	return nil
}

// percentile returns the p-th percentile of sorted (nearest rank).
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	// The epsilon keeps 99.9% of 1000 at rank 999 despite floating point.
	rank := int(math.Ceil(p/100*float64(len(sorted))-1e-9)) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}

// cpuTimes is the process's CPU time.
type cpuTimes struct{ user, sys time.Duration }
