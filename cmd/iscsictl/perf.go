package main

import (
	"context"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/goiscsi/iscsi/session"
	"github.com/spf13/pflag"
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
	// IOs completed, Errors failed; Commands is their sum.
	IOs        int64   `json:"ios"`
	Errors     int64   `json:"errors"`
	Commands   int64   `json:"commands"`
	FirstError string  `json:"firstError,omitempty"`
	IOPS       float64 `json:"iops"`
	MBPerSec   float64 `json:"mbPerSec"` // 10^6 bytes per second
	// Interrupted is true when Ctrl-C ended the run before --duration.
	Interrupted bool `json:"interrupted"`
	Latency     struct {
		// Count is the I/Os in the histogram: IOs.
		Count int64   `json:"count"`
		Mean  float64 `json:"mean"`
		Min   float64 `json:"min"`
		P50   float64 `json:"p50"`
		P90   float64 `json:"p90"`
		P99   float64 `json:"p99"`
		P999  float64 `json:"p999"`
		Max   float64 `json:"max"`
	} `json:"latencyUs"`
	// Intervals are the run's seconds, as the text output prints them.
	Intervals []perfInterval `json:"intervals"`
	// CPU time of the whole process during the run, from getrusage.
	CPUUserSec  float64 `json:"cpuUserSec"`
	CPUSysSec   float64 `json:"cpuSysSec"`
	CPUUsPerIO  float64 `json:"cpuUsPerIO"`
	CPUMeasured bool    `json:"cpuMeasured"`
	// Recovery counts the session's reinstatements and retried commands.
	Recovery recoveryCounts `json:"recovery"`
}

// perfInterval is one second of a perf run.
type perfInterval struct {
	Sec      int     `json:"sec"`
	IOs      int64   `json:"ios"`
	IOPS     float64 `json:"iops"`
	MBPerSec float64 `json:"mbPerSec"`
	P99Us    float64 `json:"p99Us"`
}

// Latencies go into HDR histograms from 1 µs to 1 min at 3 significant
// digits: a fixed size (tens of KiB) however long the run, where keeping
// every sample grew by 8 bytes an I/O.
const (
	histMinUs   = 1
	histMaxUs   = 60_000_000
	histSigFigs = 3
)

func newLatencyHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(histMinUs, histMaxUs, histSigFigs)
}

func defPerf(a *app, fs *pflag.FlagSet) runFunc {
	var tf targetFlags
	tf.register(fs, a)
	lun := fs.IntP("lun", "l", -1, "logical unit; -1 means the first disk the target reports")
	bsFlag := fs.Int("bs", 4096, "bytes per command (a multiple of the LUN's block size)")
	qd := fs.Int("qd", 16, "queue depth: commands in flight")
	dur := fs.Duration("duration", 10*time.Second, "how long to run")
	rw := fs.String("rw", "read", "read or write (write overwrites the LUN's data)")
	pattern := fs.String("pattern", "random", "random or sequential")
	conns := fs.IntP("conns", "c", 1, "connections of the session (MC/S); commands are spread over them")
	tf.recoveryFlag(fs)
	return func(ctx context.Context, pos []string) error {
		if err := tf.fromURL(a, pos, targetAuto); err != nil {
			return err
		}
		if err := tf.lunFrom(lun); err != nil {
			return err
		}
		return runPerf(ctx, a, &tf, *lun, *bsFlag, *qd, *dur, *rw, *pattern, *conns)
	}
}

func runPerf(ctx context.Context, a *app, tf *targetFlags, lunv, bsv, qdv int, durv time.Duration, rwv, patternv string, connsv int) error {
	lun, bsFlag, qd, dur, rw, pattern, conns := &lunv, &bsv, &qdv, &durv, &rwv, &patternv, &connsv
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
	err := a.withSession(ctx, tf, *conns, func(s *session.Session) error {
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
			err = measureAsync(ctx, a, s, l, blk, per, span, *dur, *qd, *rw == "write", *pattern == "random", &res)
		} else {
			err = measure(ctx, a, s, l, blk, per, span, *dur, *qd, *rw == "write", *pattern == "random", &res)
		}
		res.Recovery = countRecovery(s)
		if err != nil {
			return err
		}
		// Printed before the logout, which may take a while.
		a.printPerf(&res)
		return nil
	})
	if err != nil {
		return err
	}
	if res.Interrupted {
		// The session was logged out by withSession, after the result.
		return &exitErr{code: exitInterrupted, msg: "interrupted: the result printed is what was measured until then", resultPrinted: true}
	}
	return nil
}

// printPerf prints perf's result, as text or JSON.
func (a *app) printPerf(res *perfResult) {
	if a.json {
		a.printJSON(res)
	} else {
		if res.Interrupted {
			a.printf("interrupted after %.2f s: what was measured until then\n", res.DurationSec)
		}
		a.printf("%d I/Os in %.2f s: %.0f IOPS, %.1f MB/s\n", res.IOs, res.DurationSec, res.IOPS, res.MBPerSec)
		a.printf("latency (µs): mean %.1f  min %.1f  p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f\n",
			res.Latency.Mean, res.Latency.Min, res.Latency.P50, res.Latency.P90, res.Latency.P99, res.Latency.P999, res.Latency.Max)
		if res.CPUMeasured {
			a.printf("CPU: %.2f µs per I/O (user %.2f s, sys %.2f s)\n", res.CPUUsPerIO, res.CPUUserSec, res.CPUSysSec)
		}
		if res.Errors > 0 {
			a.printf("%d I/Os failed; the first: %s\n", res.Errors, safe(res.FirstError))
		}
	}
}

// perfWorker is one worker's latencies: all of the run's, and the current
// second's, which the ticker takes each second.
type perfWorker struct {
	mu  sync.Mutex
	sec *hdrhistogram.Histogram // since the last line per second
}

func measure(ctx context.Context, a *app, s *session.Session, lun, blk int, per, span uint64, d time.Duration, qd int, write, random bool, res *perfResult) error {
	rctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var next atomic.Uint64
	m := newPerfRun(a, qd, per, blk, d)
	var wg sync.WaitGroup
	for w := range qd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pw := m.workers[w]
			buf := make([]byte, int(per)*blk)
			if write {
				rand.Read(buf)
			}
			r := mrand.New(mrand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
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
					m.fail(trimPrefixes(err.Error()))
					continue
				}
				pw.record(time.Since(t0))
				m.ios.Add(1)
			}
		}()
	}
	wg.Wait()
	return m.finish(ctx, res)
}

// perfRun is what a run of perf measures, shared by its workers (measure,
// measureAsync): a latency histogram per worker, the counts, and the line
// per second that a goroutine prints while it runs.
type perfRun struct {
	a        *app
	workers  []*perfWorker
	ioBytes  float64
	ios      atomic.Int64
	errs     atomic.Int64
	firstErr atomic.Value
	cpu0     cpuTimes
	cpuOK    bool
	start    time.Time
	res      []perfInterval
	all      *hdrhistogram.Histogram // the lines' latencies, merged by perSecond
	bar      *progress
	tick     *time.Ticker
	stop     chan struct{}
	done     chan struct{}
}

// newPerfRun starts the clock, the CPU count and the line per second.
func newPerfRun(a *app, qd int, per uint64, blk int, d time.Duration) *perfRun {
	m := &perfRun{a: a, workers: make([]*perfWorker, qd), ioBytes: float64(int(per) * blk),
		all: newLatencyHist(), stop: make(chan struct{}), done: make(chan struct{})}
	for i := range m.workers {
		m.workers[i] = &perfWorker{sec: newLatencyHist()}
	}
	m.bar = a.newProgress(int64(d/time.Second), "perf", false)
	m.cpu0, m.cpuOK = processCPU()
	m.start = time.Now()
	m.tick = time.NewTicker(time.Second)
	go m.perSecond()
	return m
}

// record adds one I/O's latency to the worker's histogram of the current
// second; perSecond merges it into the run's once a second (one histogram
// written per I/O, not two: at queue depth 32 a second one was 3 % of the
// tool's CPU).
func (pw *perfWorker) record(d time.Duration) {
	us := max(d.Microseconds(), histMinUs)
	pw.mu.Lock()
	// A latency past the histogram's range counts as its top.
	if pw.sec.RecordValue(us) != nil {
		pw.sec.RecordValue(histMaxUs)
	}
	pw.mu.Unlock()
}

// fail counts a failed I/O, keeping the first error.
func (m *perfRun) fail(msg string) {
	m.errs.Add(1)
	m.firstErr.CompareAndSwap(nil, msg)
}

// perSecond prints a line per second, as iscsi-perf does.
func (m *perfRun) perSecond() {
	defer close(m.done)
	sec := newLatencyHist()
	for n := 1; ; n++ {
		select {
		case <-m.stop:
			return
		case <-m.tick.C:
		}
		sec.Reset()
		for _, pw := range m.workers {
			pw.mu.Lock()
			sec.Merge(pw.sec)
			pw.sec.Reset()
			pw.mu.Unlock()
		}
		m.all.Merge(sec)
		iv := perfInterval{Sec: n, IOs: sec.TotalCount(), IOPS: float64(sec.TotalCount()),
			MBPerSec: float64(sec.TotalCount()) * m.ioBytes / 1e6, P99Us: float64(sec.ValueAtQuantile(99))}
		m.res = append(m.res, iv)
		m.bar.clear()
		m.a.printf("%4d s: %8.0f IOPS  %8.1f MB/s  p99 %8.0f µs\n", iv.Sec, iv.IOPS, iv.MBPerSec, iv.P99Us)
		m.bar.add(1)
	}
}

// finish stops the clock and fills res; ctx ended (Ctrl-C) marks the run
// interrupted, what was measured until then its result.
func (m *perfRun) finish(ctx context.Context, res *perfResult) error {
	elapsed := time.Since(m.start)
	m.tick.Stop()
	close(m.stop)
	<-m.done
	m.bar.finish()
	cpu1, _ := processCPU()
	if ctx.Err() != nil {
		res.Interrupted = true
	}
	// What was recorded after the last line per second.
	all := m.all
	for _, pw := range m.workers {
		pw.mu.Lock()
		all.Merge(pw.sec)
		pw.mu.Unlock()
	}
	res.Intervals = m.res
	res.DurationSec = elapsed.Seconds()
	res.IOs = m.ios.Load()
	res.Errors = m.errs.Load()
	res.Commands = res.IOs + res.Errors
	if e, ok := m.firstErr.Load().(string); ok {
		res.FirstError = e
	}
	res.IOPS = float64(res.IOs) / res.DurationSec
	res.MBPerSec = res.IOPS * m.ioBytes / 1e6
	if res.Intervals == nil {
		res.Intervals = []perfInterval{}
	}
	res.Latency.Count = all.TotalCount()
	if all.TotalCount() > 0 {
		res.Latency.Mean = all.Mean()
		res.Latency.Min = float64(all.Min())
		res.Latency.P50 = float64(all.ValueAtQuantile(50))
		res.Latency.P90 = float64(all.ValueAtQuantile(90))
		res.Latency.P99 = float64(all.ValueAtQuantile(99))
		res.Latency.P999 = float64(all.ValueAtQuantile(99.9))
		res.Latency.Max = float64(all.Max())
	}
	if m.cpuOK {
		res.CPUMeasured = true
		res.CPUUserSec = (cpu1.user - m.cpu0.user).Seconds()
		res.CPUSysSec = (cpu1.sys - m.cpu0.sys).Seconds()
		if res.IOs > 0 {
			res.CPUUsPerIO = (res.CPUUserSec + res.CPUSysSec) * 1e6 / float64(res.IOs)
		}
	}
	if res.IOs == 0 && res.Errors > 0 {
		return fmt.Errorf("every I/O failed; the first: %s", res.FirstError)
	}
	return nil
}

// cpuTimes is the process's CPU time.
type cpuTimes struct{ user, sys time.Duration }
