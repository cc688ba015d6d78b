package main

import (
	"context"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"sync/atomic"
	"time"

	"github.com/goiscsi/iscsi/session"
)

// measureAsync is measure through session.Submit: qd calls in flight, each
// submitted again from its Done on the connection's reader, so that no
// goroutine is woken per I/O and nothing is allocated per I/O (each call
// keeps its CDB, buffer and latency record). It fills res as measure does.
func measureAsync(ctx context.Context, s *session.Session, lun, blk int, per, span uint64, d time.Duration, qd int, write, random bool, res *perfResult) error {
	type worker struct {
		call  session.Call
		cdb   [16]byte
		rng   *mrand.Rand
		lats  []time.Duration
		start time.Time
	}
	var next atomic.Uint64
	var ios, errs atomic.Int64
	var firstErr atomic.Value
	var stop atomic.Bool
	finished := make(chan struct{}, qd)
	ws := make([]worker, qd)
	rw := byte(0x88)
	if write {
		rw = 0x8a
	}
	var submit func(w *worker)
	done := func(c *session.Call) {
		w := &ws[c.Tag]
		switch {
		case c.Err == nil && c.Result.N == int(per)*blk:
			w.lats = append(w.lats, time.Since(w.start))
			ios.Add(1)
		case c.Err == nil:
			errs.Add(1)
			firstErr.CompareAndSwap(nil, fmt.Sprintf("transferred %d of %d bytes", c.Result.N, int(per)*blk))
		case !stop.Load():
			errs.Add(1)
			firstErr.CompareAndSwap(nil, trimPrefixes(c.Err.Error()))
		}
		submit(w)
	}
	submit = func(w *worker) {
		if stop.Load() || ctx.Err() != nil {
			finished <- struct{}{}
			return
		}
		var idx uint64
		if random {
			idx = w.rng.Uint64N(span)
		} else {
			idx = (next.Add(1) - 1) % span
		}
		lba, n := idx*per, uint32(per)
		w.cdb = [16]byte{0: rw, 10: byte(n >> 24), 11: byte(n >> 16), 12: byte(n >> 8), 13: byte(n)}
		for i := range 8 {
			w.cdb[2+i] = byte(lba >> (56 - 8*i))
		}
		w.start = time.Now()
		if err := s.Submit(&w.call); err != nil {
			errs.Add(1)
			firstErr.CompareAndSwap(nil, trimPrefixes(err.Error()))
			finished <- struct{}{}
		}
	}
	for i := range ws {
		w := &ws[i]
		buf := make([]byte, int(per)*blk)
		if write {
			rand.Read(buf)
		}
		w.call = session.Call{Cmd: session.Command{LUN: lun, CDB: w.cdb[:]}, Done: done, Tag: uint64(i)}
		if write {
			w.call.Cmd.Write = buf
		} else {
			w.call.Cmd.Read = buf
		}
		w.rng = mrand.New(mrand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))
		w.lats = make([]time.Duration, 0, 1<<14)
	}
	cpu0, cpuOK := processCPU()
	start := time.Now()
	for i := range ws {
		submit(&ws[i])
	}
	timer := time.NewTimer(d)
	select {
	case <-timer.C:
	case <-ctx.Done():
		timer.Stop()
	}
	stop.Store(true)
	// Every call ends: with its status, or failed when the connection
	// ends; a target that answers nothing more is bounded by the
	// session's keepalive (NOPTimeout), and by ctx through Close.
	for range qd {
		select {
		case <-finished:
		case <-ctx.Done():
			s.Close()
			return ctx.Err()
		}
	}
	elapsed := time.Since(start)
	cpu1, _ := processCPU()
	lats := make([][]time.Duration, qd)
	for i := range ws {
		lats[i] = ws[i].lats
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
