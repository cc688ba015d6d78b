package main

import (
	"context"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/goiscsi/iscsi/session"
)

// asyncDrain bounds the wait, once a run ends, for the calls still in
// flight.
const asyncDrain = 10 * time.Second

// measureAsync is measure through session.Submit: qd calls in flight, each
// submitted again from its Done on the connection's reader, so that no
// goroutine is woken per I/O and nothing is allocated per I/O (each call
// keeps its CDB and buffer; latencies go into the worker's histogram). It
// fills res as measure does.
func measureAsync(ctx context.Context, a *app, s *session.Session, lun, blk int, per, span uint64, d time.Duration, qd int, write, random bool, res *perfResult) error {
	type worker struct {
		call  session.Call
		cdb   [16]byte
		rng   *mrand.Rand
		start time.Time
	}
	// One histogram for the run's current second, not one per call: the
	// calls complete on the connection's reader (one goroutine per
	// connection), so it is not contended, and 32 histograms of ~200 KiB
	// each, one touched per I/O, cost cache misses (RecordValues was 14 %
	// of the tool's user time at queue depth 32).
	m := newPerfRun(a, 1, per, blk, d)
	var next atomic.Uint64
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
			m.workers[0].record(time.Since(w.start))
			m.ios.Add(1)
		case c.Err == nil:
			m.fail(fmt.Sprintf("transferred %d of %d bytes", c.Result.N, int(per)*blk))
		case !stop.Load():
			m.fail(trimPrefixes(c.Err.Error()))
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
			m.fail(trimPrefixes(err.Error()))
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
	}
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
	// Every call ends: with its status, or, from a target that answers
	// nothing more within asyncDrain, failed by closing the session (Close
	// runs every call's Done before it returns).
	drain := time.NewTimer(asyncDrain)
	defer drain.Stop()
	for range qd {
		select {
		case <-finished:
		case <-drain.C:
			s.Close()
			<-finished
		}
	}
	return m.finish(ctx, res)
}
